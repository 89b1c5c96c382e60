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
    used |= {c["args"][0] for _, c in containers() if c["image"].startswith("streamrec")}
    assert used >= {"worker", "serve", "feed", "topics", "retrain"}
    assert used <= cli_commands(), sorted(used - cli_commands())


def test_ports_are_the_settings_defaults() -> None:
    for name, container in containers():
        if not container["image"].startswith("streamrec") or "ports" not in container:
            continue
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert ports == {PORTS[container["args"][0]]}, name
    compose = yaml.safe_load(COMPOSE.read_text())
    assert compose["services"]["worker"]["expose"] == [str(PORTS["worker"])]
    assert compose["services"]["server"]["ports"] == [str(PORTS["serve"])]
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    found = {job["job_name"]: job["dns_sd_configs"][0]["port"] for job in scrape["scrape_configs"]}
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
    assert container["args"] == ["retrain"]
    assert container["envFrom"] == [
        {"configMapRef": {"name": "streamrec"}},
        {"secretRef": {"name": "streamrec"}},
    ]
    config = next(doc for doc in k8s_documents() if doc["kind"] == "ConfigMap")["data"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {config["STREAMREC_REGISTRY"], config["STREAMREC_ARCHIVE_DIR"]}
    assert not mounts[config["STREAMREC_REGISTRY"]].get("readOnly")  # it publishes there
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
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
