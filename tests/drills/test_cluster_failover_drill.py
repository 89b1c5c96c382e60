"""Drill 9: a primary of a Redis Cluster (3 primaries, a replica each) SIGKILLed during
a replay through the worker, with the server under load on the same cluster. The
replica takes over; every event is applied once, the state is the one the same
replay leaves on a single Redis, and the server's 503s keep to the failover."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.scenarios.cluster_failover import cluster_failover_drill
from devtools.devstack import free_port
from retrain.training import TrainedModels
from streamrec.settings import Settings

# Six Redis nodes, a worker, a server and a load: `make test` runs it alone.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.alone]


def test_a_primary_killed_mid_replay_fails_over_and_loses_nothing(
    make_settings: Callable[..., Settings], trained: TrainedModels, tmp_path: Path
) -> None:
    # A Redis timeout the shared cores cannot trip (as the model-server tests'): the
    # 503s counted are the failover's, not a starved node's.
    settings = make_settings(
        "drill-cluster-failover",
        registry=tmp_path / "registry",
        serve_port=free_port(),
        serve_redis_timeout_ms=1000,
        serve_budget_ms=60_000,
    )
    drill = cluster_failover_drill(settings, trained, tmp_path)
    figures = drill.figures()
    print(figures)

    assert (drill.lost, drill.duplicated) == (0, 0), figures
    assert (drill.users_differing, drill.items_differing) == (0, 0), figures
    assert drill.applied_at_kill < drill.events, figures  # the kill came mid-replay
    # The server kept answering: nothing but 200s and 503s, and the 503s only for
    # requests in flight at the kill or sent until shortly after the replica took over.
    assert {a.status for a in drill.answers} <= {200, 503}, figures
    assert any(a.status == 200 and a.sent_s > drill.killed_at_s for a in drill.answers)
    for answer in drill.unavailable():
        assert answer.sent_s + answer.latency_s >= drill.killed_at_s, figures
        assert answer.sent_s <= drill.killed_at_s + drill.promoted_s + 5, figures
