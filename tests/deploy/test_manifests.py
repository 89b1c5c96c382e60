"""Compose, Kubernetes and Docker files parse and name only commands, settings
and ports that exist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from cli import app
from streamrec.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DEFAULTS = Settings(kafka_bootstrap="k:9092", redis_url="redis://r:6379/0")
PORTS = {
    "worker": DEFAULTS.worker_web_port,
    "serve": DEFAULTS.serve_port,
    "feed": DEFAULTS.feed_web_port,
}


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec.get("template", {}).get("spec", {})
    return pod


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in k8s_documents():
        for container in pod_spec(doc).get("containers", []):
            yield doc["metadata"]["name"], container


def subcommand(container: dict[str, Any]) -> str:
    """The streamrec subcommand a container runs: its first argument, or the one after
    `streamrec` when a wrapper runs the command (the retrain job's retrain_and_push.py)."""
    args: list[str] = container["args"]
    return args[1] if "command" in container and args[0] == "streamrec" else args[0]


def compose_commands(service: dict[str, Any]) -> list[str]:
    """The streamrec subcommands a compose service runs: its command, or every
    `streamrec X` in the script of a shell entrypoint."""
    if service.get("entrypoint", [None])[0] == "/bin/sh":
        return re.findall(r"\bstreamrec ([a-z-]+)", " ".join(service["command"]))
    return [service["command"][0]]


def cli_commands() -> set[str]:
    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def setting_names() -> set[str]:
    return {f"STREAMREC_{name.upper()}" for name in Settings.model_fields}


def test_every_file_parses() -> None:
    assert yaml.safe_load(COMPOSE.read_text())["services"]
    assert {doc["kind"] for doc in k8s_documents()} >= {
        "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
        "PersistentVolumeClaim", "Job", "CronJob", "ServiceMonitor", "Kustomization",
    }  # fmt: skip
    listed = set(yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S} - {"kustomization.yaml"}


def test_no_deployment_ships_a_secret() -> None:
    """The admin token is required (compose) or made from a file the operator
    writes (Kubernetes' secretGenerator): never a default everyone knows."""
    assert not [doc for doc in k8s_documents() if doc["kind"] == "Secret"]
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == "streamrec" and generator["envs"] == ["secrets.env"]
    example = (DEPLOY / "k8s" / "secrets.env.example").read_text()
    assert re.search(r"^STREAMREC_ADMIN_TOKEN=$", example, re.M)
    assert "deploy/k8s/secrets.env" in (DEPLOY.parent / ".gitignore").read_text()
    token = yaml.safe_load(COMPOSE.read_text())["services"]["server"]["environment"]
    assert token["STREAMREC_ADMIN_TOKEN"].endswith(":?set an admin token}")


def test_every_streamrec_variable_is_a_setting() -> None:
    texts = [
        COMPOSE.read_text(),
        DOCKERFILE.read_text(),
        *(p.read_text() for p in K8S),
        (DEPLOY / "k8s" / "secrets.env.example").read_text(),
    ]
    named = {m for text in texts for m in re.findall(r"\bSTREAMREC_[A-Z0-9_]+\b", text)}
    assert named, "no settings found: the test reads the wrong files"
    assert named <= setting_names(), sorted(named - setting_names())


def test_every_command_exists() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    used = {
        command
        for s in compose["services"].values()
        if s.get("image", "").startswith("streamrec")
        for command in compose_commands(s)
    }
    used |= {subcommand(c) for _, c in containers() if c["image"].startswith("streamrec")}
    assert used >= {"worker", "serve", "feed", "topics", "retrain"}
    assert used <= cli_commands(), sorted(used - cli_commands())


def test_ports_are_the_settings_defaults() -> None:
    for name, container in containers():
        if not container["image"].startswith("streamrec") or "ports" not in container:
            continue
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert ports == {PORTS[subcommand(container)]}, name
    compose = yaml.safe_load(COMPOSE.read_text())
    assert compose["services"]["worker"]["expose"] == [str(PORTS["worker"])]
    assert compose["services"]["server"]["ports"] == [str(PORTS["serve"])]
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    found = {
        job["job_name"]: job["dns_sd_configs"][0]["port"]
        for job in scrape["scrape_configs"]
        if "dns_sd_configs" in job
    }
    assert found == {
        "streamrec-worker": PORTS["worker"],
        "streamrec-feed": PORTS["feed"],
        "streamrec-server": PORTS["serve"],
    }


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_images_are_pinned(where: str) -> None:
    if where == "compose":
        images = [
            s["image"]
            for s in yaml.safe_load(COMPOSE.read_text())["services"].values()
            if "image" in s
        ]
    else:
        images = [c["image"] for _, c in containers()]
    for image in images:
        assert ":" in image and not image.endswith(":latest"), image


def test_retraining_runs_on_a_schedule_and_workers_leave_it_alone() -> None:
    (cronjob,) = [doc for doc in k8s_documents() if doc["kind"] == "CronJob"]
    assert len(cronjob["spec"]["schedule"].split()) == 5
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"  # two cycles would race
    pod = pod_spec(cronjob)
    (container,) = pod["containers"]
    assert container["args"] == ["streamrec", "retrain"]
    # Its outcome goes to the Pushgateway the monitoring scrapes (test_wiring.py).
    assert container["command"][:2] == ["python", "/opt/streamrec/retrain_and_push.py"]
    assert container["command"][-1] == "--"
    assert container["envFrom"] == [
        {"configMapRef": {"name": "streamrec"}},
        {"secretRef": {"name": "streamrec"}},
    ]
    config = next(doc for doc in k8s_documents() if doc["kind"] == "ConfigMap")["data"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] in claims}
    assert set(mounts) == {config["STREAMREC_REGISTRY"], config["STREAMREC_ARCHIVE_DIR"]}
    assert not mounts[config["STREAMREC_REGISTRY"]].get("readOnly")  # it publishes there
    pvcs = {d["metadata"]["name"] for d in k8s_documents() if d["kind"] == "PersistentVolumeClaim"}
    assert set(claims.values()) == pvcs == {"streamrec-registry", "streamrec-archive"}
    assert (config["STREAMREC_RETRAIN_EVERY_S"], config["STREAMREC_RETRAIN_EVERY_EVENTS"]) == (
        "0",
        "0",
    )

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    retrain = services["retrain"]
    script = " ".join(retrain["command"])
    assert compose_commands(retrain) == ["retrain"]
    assert script.startswith("while true;") and "sleep" in script
    assert set(retrain["volumes"]) == set(services["worker"]["volumes"])
    assert set(retrain["volumes"]) >= {"registry:/registry", "archive:/archive"}
    assert retrain["environment"]["STREAMREC_RETRAIN_EVERY_S"] == "0"
    assert services["worker"]["environment"]["STREAMREC_RETRAIN_EVERY_S"] == "0"


# --- booting from nothing (issue 18) ---

WEB_PATHS = {"worker": "/healthz", "feed": "/healthz", "serve": "/readyz"}
K8S_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")


def test_compose_services_have_healthchecks_and_wait_for_healthy_dependencies() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in services.items():
        if service.get("restart") == "no":  # a one-shot job: done is what counts
            continue
        check = service.get("healthcheck", {})
        if name == "retrain":  # a shell loop with no port; its cycles are alerted on
            assert check == {"disable": True}
            continue
        assert check.get("test"), f"{name} has no healthcheck"
    assert services["topics"]["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert "kafka-broker-api-versions.sh" in services["kafka"]["healthcheck"]["test"][1]
    for name in ("worker", "feed", "server"):
        depends = services[name]["depends_on"]
        assert depends["redis"] == {"condition": "service_healthy"}, name
        assert depends["topics"] == {"condition": "service_completed_successfully"}, name
        # The image has no curl: the check is Python's urllib on the settings' port.
        test = services[name]["healthcheck"]["test"]
        subcommand = services[name]["command"][0]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert f"http://127.0.0.1:{PORTS[subcommand]}{WEB_PATHS[subcommand]}" in test[3], name
    assert services["feed"]["expose"] == [str(PORTS["feed"])]


def test_compose_redis_has_a_memory_limit_and_an_exporter() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory") + 1]
    assert command[command.index("--maxmemory-policy") + 1] == "volatile-ttl"
    exporter = services["redis-exporter"]
    assert exporter["image"].startswith("oliver006/redis_exporter:v")
    assert exporter["environment"]["REDIS_ADDR"] == "redis://redis:6379"


def test_the_image_runs_as_a_numeric_non_root_user_who_owns_the_volumes() -> None:
    text = DOCKERFILE.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2  # serve, train
    for stage in stages:
        # Numeric, so runAsNonRoot can check it; the train stage's `USER root` is only
        # for installing torch.
        assert re.findall(r"^USER (\S+)$", stage, re.M)[-1] == "10001:10001"
    (mkdir,) = re.findall(r"mkdir -p ([^\\\n]+)", text)
    (chown,) = re.findall(r"chown 10001:10001 ([^\\\n]+)", text)
    compose = yaml.safe_load(COMPOSE.read_text())["services"]["worker"]
    mounted = {v.split(":")[1] for v in compose["volumes"]}
    assert mounted == {"/registry", "/archive"}
    assert mounted <= set(mkdir.split()) and mounted <= set(chown.split())
    # Faust's data folder goes in the working directory: the user's home.
    assert re.findall(r"^WORKDIR (\S+)$", text, re.M)[-1] == "/var/lib/streamrec"


def pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in k8s_documents():
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            yield doc["metadata"]["name"], spec["template"]


def test_every_k8s_object_and_pod_has_the_recommended_labels() -> None:
    for doc in k8s_documents():
        if doc["kind"] == "Kustomization":
            continue
        labels = doc["metadata"].get("labels", {})
        assert all(labels.get(key) for key in K8S_LABELS), (doc["kind"], doc["metadata"]["name"])
        assert labels["app.kubernetes.io/part-of"] == "streamrec"
    for name, template in pod_templates():
        labels = template["metadata"]["labels"]
        assert all(labels.get(key) for key in K8S_LABELS), name


def test_every_k8s_pod_runs_locked_down() -> None:
    for name, template in pod_templates():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            if not container["image"].startswith("streamrec"):
                continue
            # A read-only root: /tmp (serve --workers' metric files) and the working
            # directory (Faust's data folder) are emptyDirs.
            writable = {
                m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs
            }
            wanted = (
                {"/tmp"} if subcommand(container) == "topics" else {"/tmp", "/var/lib/streamrec"}
            )
            assert writable >= wanted, name


def test_k8s_long_running_pods_have_startup_probes_and_disruption_budgets() -> None:
    docs = k8s_documents()
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        for container in pod_spec(doc)["containers"]:
            assert "startupProbe" in container, doc["metadata"]["name"]
            assert {"readinessProbe", "livenessProbe"} <= set(container), doc["metadata"]["name"]
    budgets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in ("streamrec-server", "streamrec-worker"):
        selector = budgets[name]["spec"]["selector"]["matchLabels"]
        assert selector == deployments[name]["spec"]["selector"]["matchLabels"]
    assert budgets["streamrec-server"]["spec"]["minAvailable"] == 1


def test_the_feed_has_a_service_on_its_metrics_port() -> None:
    services = {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == "Service"}
    (port,) = services["streamrec-feed"]["spec"]["ports"]
    assert port == {"name": "metrics", "port": PORTS["feed"]}
    assert services["streamrec-feed"]["spec"]["selector"] == {
        "app": "streamrec",
        "component": "feed",
    }
