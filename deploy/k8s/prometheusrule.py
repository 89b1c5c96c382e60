"""Writes prometheusrule.yaml: deploy/prometheus/rules.yml's groups as a Prometheus
Operator PrometheusRule. Run it after changing rules.yml (a test holds the two equal):

    python deploy/k8s/prometheusrule.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "prometheus" / "rules.yml"
TARGET = HERE / "prometheusrule.yaml"
HEADER = """\
# Generated from deploy/prometheus/rules.yml by prometheusrule.py: edit rules.yml,
# then run `python deploy/k8s/prometheusrule.py`. If your Prometheus selects rules
# by label (ruleSelector), add that label here or in kustomization.yaml.
"""


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "streamrec",
            "labels": {
                "app.kubernetes.io/name": "streamrec",
                "app.kubernetes.io/component": "alerts",
                "app.kubernetes.io/part-of": "streamrec",
            },
        },
        "spec": {"groups": rules["groups"]},
    }


def main() -> None:
    rule = prometheus_rule(yaml.safe_load(RULES.read_text()))
    TARGET.write_text(HEADER + yaml.safe_dump(rule, sort_keys=False, width=120))


if __name__ == "__main__":
    main()
