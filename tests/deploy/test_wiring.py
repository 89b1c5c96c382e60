"""Every alert can fire in each deployment: each metric an alert reads is exported by
a process that deployment runs and scrapes (compose: prometheus.yml's jobs -> services;
Kubernetes: ServiceMonitors -> Services -> pods), and the PrometheusRule is rules.yml."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devtools.devstack import free_port
from streamrec.metrics import FeedMetrics, IngestMetrics, ServeMetrics
from streamrec.settings import Settings
from tests.deploy.metric_names import sample_names
from tests.deploy.pusher import load_pusher

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
COMPOSE = DEPLOY / "compose" / "compose.yml"
COMPOSE_SCRAPE = DEPLOY / "compose" / "prometheus.yml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
DEFAULTS = Settings(kafka_bootstrap="k:9092", redis_url="redis://r:6379/0")
PORTS = {
    "worker": DEFAULTS.worker_web_port,
    "serve": DEFAULTS.serve_port,
    "feed": DEFAULTS.feed_web_port,
}
REDIS_EXPORTER_PORT, PUSHGATEWAY_PORT = 9121, 9091
# The redis_exporter series the rules read (its INFO memory section; it exports many
# more). A rule on another redis_* name has to be added here after checking the
# exporter's documentation.
REDIS_EXPORTER = {"redis_up", "redis_memory_used_bytes", "redis_memory_max_bytes"}
RETRAIN_METRICS = ("streamrec_retrain_total", "streamrec_retrain_seconds")

# PromQL words that are not metric names.
FUNCTIONS_AND_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def pushed_names() -> set[str]:
    """What retrain_and_push.py pushes: parsed from the text it sends."""
    text = load_pusher().exposition({}, "published", 1.0)
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def worker_names(retrain_trigger_on: bool) -> set[str]:
    """The worker's series; its retrain counters only when it starts the cycles (a
    labelled counter nobody incremented has no series)."""
    names = sample_names(IngestMetrics)
    if retrain_trigger_on:
        return names
    return {n for n in names if not n.startswith(RETRAIN_METRICS)}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers once strings, label
    matchers, groupings, ranges and function calls are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr))
    return {n for n in names if n.lower() not in FUNCTIONS_AND_KEYWORDS}


def jobs_named(expr: str) -> set[str]:
    """The jobs `up{job="..."}` asks about."""
    return set(re.findall(r'\bup\{[^}]*job="([^"]+)"', expr))


def alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


@dataclass(frozen=True)
class Scraped:
    """What one deployment's Prometheus sees: series names and job names."""

    names: frozenset[str]
    jobs: frozenset[str]


def unscraped(scraped: Scraped, rules: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Per alert, the metrics (and `up` jobs) it reads that nothing scraped exports."""
    missing = {}
    for rule in rules:
        names = metric_names(rule["expr"]) - {"up"}
        lost = (names - scraped.names) | {
            f'up{{job="{j}"}}' for j in jobs_named(rule["expr"]) - scraped.jobs
        }
        if lost:
            missing[rule["alert"]] = lost
    return missing


# --- compose ---


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def compose_pushers(services: dict[str, dict[str, Any]], host: str, port: int) -> bool:
    """A service runs retrain_and_push.py against this Pushgateway."""
    wanted = f"--pushgateway http://{host}:{port}"
    return any(
        "retrain_and_push.py" in " ".join(s.get("command", [])) and wanted in " ".join(s["command"])
        for s in services.values()
    )


def compose_exports(services: dict[str, dict[str, Any]], name: str, port: int) -> set[str]:
    """What compose service `name` exports on `port`."""
    service = services[name]
    image = service.get("image", "")
    if image.startswith("streamrec:") and service.get("command"):
        subcommand = service["command"][0]
        if PORTS.get(subcommand) != port:
            return set()
        if subcommand == "worker":
            env = service.get("environment", {})
            trigger = (
                env.get("STREAMREC_RETRAIN_EVERY_S"),
                env.get("STREAMREC_RETRAIN_EVERY_EVENTS"),
            )
            return worker_names(trigger != ("0", "0"))
        return sample_names({"serve": ServeMetrics, "feed": FeedMetrics}[subcommand])
    if image.startswith("oliver006/redis_exporter:") and port == REDIS_EXPORTER_PORT:
        return REDIS_EXPORTER
    if image.startswith("prom/pushgateway:") and port == PUSHGATEWAY_PORT:
        return pushed_names() if compose_pushers(services, name, port) else set()
    return set()


def compose_targets(job: dict[str, Any]) -> Iterator[tuple[str, int]]:
    for sd in job.get("dns_sd_configs", []):
        for name in sd["names"]:
            yield name, sd["port"]
    for static in job.get("static_configs", []):
        for target in static["targets"]:
            host, port = target.rsplit(":", 1)
            yield host, int(port)


def compose_scraped() -> Scraped:
    services = compose_services()
    names: set[str] = set()
    jobs = set()
    for job in yaml.safe_load(COMPOSE_SCRAPE.read_text())["scrape_configs"]:
        exported: set[str] = set()
        for host, port in compose_targets(job):
            assert host in services, f"{job['job_name']} scrapes {host}, not a compose service"
            exported |= compose_exports(services, host, port)
        assert exported, f"scrape job {job['job_name']} finds no metrics"
        if exported & pushed_names():
            assert job.get("honor_labels"), "the Pushgateway's job needs honor_labels"
        names |= exported
        jobs.add(job["job_name"])
    return Scraped(frozenset(names), frozenset(jobs))


# --- Kubernetes ---


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_template(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template: dict[str, Any] | None = spec.get("template")
    return template


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def k8s_pushers(host: str, port: int) -> bool:
    wanted = ["--pushgateway", f"http://{host}:{port}"]
    for doc in k8s_documents():
        template = pod_template(doc)
        for container in (template or {}).get("spec", {}).get("containers", []):
            command = container.get("command", [])
            joined = " ".join(command)
            if "retrain_and_push.py" in joined and " ".join(wanted) in joined:
                return True
    return False


def k8s_exports(container: dict[str, Any], port: int, service_name: str) -> set[str]:
    image = container["image"]
    if image.startswith("streamrec:"):
        subcommand = container["args"][0]
        if PORTS.get(subcommand) != port:
            return set()
        if subcommand == "worker":
            config = next(d for d in k8s_documents() if d["kind"] == "ConfigMap")["data"]
            trigger = (
                config["STREAMREC_RETRAIN_EVERY_S"],
                config["STREAMREC_RETRAIN_EVERY_EVENTS"],
            )
            return worker_names(trigger != ("0", "0"))
        return sample_names({"serve": ServeMetrics, "feed": FeedMetrics}[subcommand])
    if image.startswith("oliver006/redis_exporter:") and port == REDIS_EXPORTER_PORT:
        return REDIS_EXPORTER
    if image.startswith("prom/pushgateway:") and port == PUSHGATEWAY_PORT:
        return pushed_names() if k8s_pushers(service_name, port) else set()
    return set()


def container_port(container: dict[str, Any], target: int | str) -> int | None:
    for port in container.get("ports", []):
        if target in (port["containerPort"], port.get("name")):
            return int(port["containerPort"])
    return None


def k8s_scraped() -> Scraped:
    """ServiceMonitor -> Services its selector matches -> the endpoint's port by name
    -> the pods the Service selects -> the container behind that port."""
    docs = k8s_documents()
    services = [d for d in docs if d["kind"] == "Service"]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    names: set[str] = set()
    jobs = set()
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if selects(selector, s["metadata"].get("labels", {}))]
        assert matched, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for service in matched:
            service_name = service["metadata"]["name"]
            for endpoint in monitor["spec"]["endpoints"]:
                ports = {p["name"]: p for p in service["spec"]["ports"]}
                if endpoint["port"] not in ports:
                    continue
                target = ports[endpoint["port"]].get("targetPort", ports[endpoint["port"]]["port"])
                exported: set[str] = set()
                for workload in workloads:
                    template = workload["spec"]["template"]
                    if not selects(service["spec"]["selector"], template["metadata"]["labels"]):
                        continue
                    for container in template["spec"]["containers"]:
                        port = container_port(container, target)
                        if port is not None:
                            exported |= k8s_exports(container, port, service_name)
                assert exported, f"{service_name}:{endpoint['port']} is scraped but exports nothing"
                if exported & pushed_names():
                    assert endpoint.get("honorLabels"), "the Pushgateway needs honorLabels"
                names |= exported
                jobs.add(service_name)  # the Operator's job label: the Service's name
    return Scraped(frozenset(names), frozenset(jobs))


# --- the tests ---


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_every_alert_reads_metrics_the_deployment_scrapes(where: str) -> None:
    scraped = compose_scraped() if where == "compose" else k8s_scraped()
    assert not unscraped(scraped, alerts()), unscraped(scraped, alerts())


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_a_metric_nobody_exports_fails_the_check(where: str) -> None:
    scraped = compose_scraped() if where == "compose" else k8s_scraped()
    made_up = [
        {"alert": "A", "expr": "rate(streamrec_no_such_thing_total[5m]) > 0"},
        {"alert": "B", "expr": 'up{job="streamrec-nothing"} == 0'},
        {"alert": "C", "expr": "kube_pod_status_ready == 0"},
    ]
    assert unscraped(scraped, made_up) == {
        "A": {"streamrec_no_such_thing_total"},
        "B": {'up{job="streamrec-nothing"}'},
        "C": {"kube_pod_status_ready"},
    }
    # The retraining alerts hang on the Pushgateway: the worker's own counters are
    # not there, its trigger being off in both deployments.
    without_pushgateway = Scraped(scraped.names - pushed_names(), scraped.jobs)
    lost = unscraped(without_pushgateway, alerts())
    assert set(lost) == {"StreamrecRetrainFailing", "StreamrecRetrainRejectedRepeatedly"}


def test_metric_names_are_read_out_of_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(streamrec_a_bucket{endpoint="x"}[5m]))) > 0.02'
    ) == {"streamrec_a_bucket"}
    assert metric_names("redis_memory_used_bytes / clamp_min(redis_memory_max_bytes, 1) > 0.8") == {
        "redis_memory_used_bytes",
        "redis_memory_max_bytes",
    }
    assert metric_names("count(count by (version) (streamrec_model_info == 1)) > 1") == {
        "streamrec_model_info"
    }
    assert metric_names('up{job="streamrec-worker"} == 0') == {"up"}


def test_the_prometheus_rule_is_rules_yml() -> None:
    (rule,) = [d for d in k8s_documents() if d["kind"] == "PrometheusRule"]
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert rule["spec"]["groups"] == groups, "run `python deploy/k8s/prometheusrule.py`"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (make binaries)"
)
def test_promtool_accepts_the_compose_scrape_config(tmp_path: Path) -> None:
    """As Prometheus reads it in its container, with rules.yml where compose mounts it."""
    config = yaml.safe_load(COMPOSE_SCRAPE.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("prometheus-redis-exporter") is None,
    reason="redis-server or prometheus-redis-exporter not installed (make binaries)",
)
def test_redis_as_compose_runs_it_gives_the_exporter_the_memory_alert_s_series(
    tmp_path: Path,
) -> None:
    """compose's redis command as written (its maxmemory given), Debian's
    redis_exporter: the series the memory alert divides, with a limit to divide by."""
    command = compose_services()["redis"]["command"]
    command = [arg.replace("${REDIS_MAXMEMORY:-1gb}", "64mb") for arg in command]
    redis_port, exporter_port = free_port(), free_port()
    redis_args = ["--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    exporter_args = [
        "prometheus-redis-exporter", f"-redis.addr=redis://127.0.0.1:{redis_port}",
        f"-web.listen-address=127.0.0.1:{exporter_port}",
    ]  # fmt: skip
    with (
        subprocess.Popen([*command, *redis_args], stdout=subprocess.DEVNULL) as redis_server,
        subprocess.Popen(exporter_args, stderr=subprocess.DEVNULL) as exporter,
    ):
        try:
            text = ""
            deadline = time.monotonic() + 30
            while "redis_memory_max_bytes" not in text and time.monotonic() < deadline:
                time.sleep(0.2)
                try:
                    url = f"http://127.0.0.1:{exporter_port}/metrics"
                    with urllib.request.urlopen(url, timeout=2) as response:
                        text = response.read().decode()
                except OSError:
                    pass
        finally:
            exporter.terminate()
            redis_server.terminate()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert set(samples) >= REDIS_EXPORTER, sorted(REDIS_EXPORTER - set(samples))
    assert samples["redis_memory_max_bytes"] == 64 * 1024 * 1024
    assert samples["redis_up"] == 1
