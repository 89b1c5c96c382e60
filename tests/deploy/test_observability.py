"""The alert rules and the dashboard name only metrics the code exports; promtool
accepts the rules; a real Prometheus scrapes a live worker and a live model server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from bench.scenarios.models import publish, serving_models
from bench.scenarios.workers import start_worker
from devtools.devstack import free_port
from devtools.processes import ServiceProcess
from streamrec.client import RecommenderClient
from streamrec.events import Event, EventType
from streamrec.metrics import FeedMetrics, IngestMetrics, ServeMetrics
from streamrec.producer import EventProducer
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.deploy.metric_names import sample_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "streamrec.json"
# Metrics that come from Prometheus itself or from redis_exporter, not from us.
EXTERNAL = {"up", "redis_memory_used_bytes", "redis_memory_max_bytes"}
NAME = re.compile(r"\b(?:streamrec_[a-z0-9_]+|up|redis_[a-z0-9_]+)\b")


def exported_families() -> set[str]:
    registry = CollectorRegistry()
    IngestMetrics(registry)
    ServeMetrics(registry)
    FeedMetrics(registry)
    return {family.name for family in registry.collect()}


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


@pytest.mark.parametrize("where", ["rules", "dashboard"])
def test_every_metric_named_is_one_we_export(where: str) -> None:
    expressions = rule_expressions() if where == "rules" else dashboard_expressions()
    named = {name for expr in expressions for name in NAME.findall(expr)}
    unknown = named - sample_names(IngestMetrics, ServeMetrics, FeedMetrics) - EXTERNAL
    assert not unknown, f"{where} name metrics nobody exports: {sorted(unknown)}"


def test_every_exported_metric_has_a_dashboard_panel() -> None:
    shown = " ".join(dashboard_expressions())
    missing = {f for f in exported_families() if f not in shown}
    assert not missing, f"no panel shows {sorted(missing)}"


def test_every_alert_has_a_runbook_entry() -> None:
    operations = (DEPLOY.parent / "docs" / "operations.md").read_text()
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert f"### {rule['alert']}" in operations, f"no runbook for {rule['alert']}"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (make binaries)"
)
def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    for args in (
        ["check", "rules", str(RULES)],
        ["check", "config", str(RULES.parent / "prometheus.yml")],
    ):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@contextmanager
def prometheus_scraping(job: str, target_port: int, workdir: Path) -> Iterator[int]:
    """A real Prometheus scraping one target every second, with our rules; its port."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
                ],
            }
        )
    )
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield port
    finally:
        prometheus.terminate()
        prometheus.wait()


def query_until(port: int, expr: str, wanted: float, timeout_s: float = 60) -> float:
    """Ask Prometheus' HTTP API for `expr` until it returns `wanted` or time runs out."""
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    deadline, value = time.monotonic() + timeout_s, 0.0
    while time.monotonic() < deadline and value != wanted:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                result = json.loads(response.read())["data"]["result"]
            value = float(result[0]["value"][1]) if result else 0.0
        except OSError:
            pass
        time.sleep(0.5)
    return value


needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (make binaries)"
)


@pytest.mark.integration
@needs_prometheus
def test_a_real_prometheus_scrapes_a_live_worker(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("scraped")
    ensure_topics(settings)
    worker = start_worker(settings, tmp_path)
    try:
        with prometheus_scraping("streamrec-worker", settings.worker_web_port, tmp_path) as port:
            with EventProducer(settings) as producer:
                for n in range(20):
                    event = Event(f"e{n}", "u1", f"i{n}", EventType.CLICK, 1_700_000_000_000 + n)
                    producer.send(event)
            expr = 'sum(streamrec_events_total{outcome="accepted"})'
            assert query_until(port, expr, 20) == 20
    finally:
        worker.stop()


@pytest.mark.integration
@needs_prometheus
def test_a_real_prometheus_scrapes_a_live_model_server(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        "scraped-server", registry=tmp_path / "registry", serve_port=free_port()
    )
    version = publish(serving_models(), settings.registry).version
    with (
        ServiceProcess(settings, ["serve"], tmp_path / "serve.log", settings.serve_port),
        prometheus_scraping("streamrec-server", settings.serve_port, tmp_path) as port,
    ):
        with RecommenderClient(f"http://127.0.0.1:{settings.serve_port}") as client:
            for n in range(7):
                client.recommend(f"nobody-{n}", k=3)
        expr = 'sum(streamrec_serve_requests_total{job="streamrec-server",endpoint="recommend"})'
        assert query_until(port, expr, 7) == 7
        info = f'streamrec_model_info{{job="streamrec-server",version="{version}"}}'
        assert query_until(port, info, 1) == 1
