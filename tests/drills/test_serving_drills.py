"""Fault drills on serving (real Redis, real `streamrec serve` processes, real bundles):
bad bundles are refused under load, and a killed server costs the client nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.scenarios.serving import bad_bundle_drill, server_kill_drill
from devtools.devstack import free_port
from retrain.training import TrainedModels
from streamrec.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def serving_settings(make_settings: Callable[..., Settings], name: str, root: Path) -> Settings:
    return make_settings(name, registry=root, serve_port=free_port(), registry_poll_s=0.1)


def test_bad_bundles_are_refused_while_the_old_version_serves(
    make_settings: Callable[..., Settings], trained: TrainedModels, tmp_path: Path
) -> None:
    settings = serving_settings(make_settings, "drill-bundles", tmp_path / "registry")
    drill = bad_bundle_drill(settings, trained, tmp_path)

    assert drill.load["errors"] == 0
    assert drill.load["requests"] > 0
    assert drill.versions_seen == [drill.served_version]
    assert drill.refused_metric == 3 and drill.swapped_metric == 1
    assert drill.refusals_logged == 3
    assert "sha256" in drill.refused["corrupt"]
    assert "feature schema" in drill.refused["feature_schema"]
    assert "24-dim item vectors" in drill.refused["shapes"]


def test_a_killed_server_costs_the_retrying_client_nothing(
    make_settings: Callable[..., Settings], trained: TrainedModels, tmp_path: Path
) -> None:
    settings = serving_settings(make_settings, "drill-kill-server", tmp_path / "registry")
    drill = server_kill_drill(settings, trained, tmp_path)

    assert drill.load_before_kill["errors"] == 0
    assert drill.load["errors"] == 0
    assert drill.load["requests"] > drill.load_before_kill["requests"]
    assert drill.survivor_requests_after_kill > 0
