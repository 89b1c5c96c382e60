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

from streamrec.cli import app
from streamrec.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DEFAULTS = Settings(kafka_bootstrap="k:9092", redis_url="redis://r:6379/0")
PORTS = {
    "worker": DEFAULTS.worker_web_port,
    "serve": DEFAULTS.serve_port,
    "publish": DEFAULTS.publisher_web_port,
}


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in k8s_documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            yield doc["metadata"]["name"], container


def cli_commands() -> set[str]:
    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def setting_names() -> set[str]:
    return {f"STREAMREC_{name.upper()}" for name in Settings.model_fields}


def test_every_file_parses() -> None:
    assert yaml.safe_load(COMPOSE.read_text())["services"]
    assert {doc["kind"] for doc in k8s_documents()} >= {
        "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
        "PersistentVolumeClaim", "Job", "ServiceMonitor", "Kustomization",
    }  # fmt: skip


def test_every_streamrec_variable_is_a_setting() -> None:
    texts = [COMPOSE.read_text(), DOCKERFILE.read_text(), *(p.read_text() for p in K8S)]
    named = {m for text in texts for m in re.findall(r"\bSTREAMREC_[A-Z0-9_]+\b", text)}
    assert named, "no settings found: the test reads the wrong files"
    assert named <= setting_names(), sorted(named - setting_names())


def test_every_command_exists() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    used = {
        s["command"][0]
        for s in compose["services"].values()
        if s.get("image", "").startswith("streamrec")
    }
    used |= {c["args"][0] for _, c in containers() if c["image"].startswith("streamrec")}
    assert used >= {"worker", "serve", "publish", "topics"}
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
        "streamrec-publisher": PORTS["publish"],
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
