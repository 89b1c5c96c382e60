"""Drill 8: Redis frozen for 5 s under load. The server answers every request within
its latency budget plus 50 ms: a 503 (Retry-After) where it needs Redis, trending
from its last read for /recommend, and no other 5xx."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.scenarios.redis_freeze import redis_freeze_drill
from devtools.devstack import free_port
from retrain.training import TrainedModels
from streamrec.settings import Settings

# It asserts a latency maximum: `make test` runs it alone, after the parallel run.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.alone]


def test_with_redis_frozen_every_answer_comes_within_the_budget(
    make_settings: Callable[..., Settings], trained: TrainedModels, tmp_path: Path
) -> None:
    settings = make_settings(
        "drill-redis-freeze", registry=tmp_path / "registry", serve_port=free_port()
    )
    drill = redis_freeze_drill(settings, trained, tmp_path)
    figures = drill.figures()

    frozen = drill.during_freeze()
    assert len(frozen) > 100, figures
    assert {a.status for a in drill.answers} <= {200, 503}, figures
    # Redis is what the drill takes away: the answers while it is frozen must come in
    # time (before and after, the figures show what the machine's load allows).
    assert max(a.latency_s for a in frozen) * 1000 <= drill.budget_ms + 50, figures
    kinds = {(a.status, a.kind) for a in frozen}
    assert (503, "state_unavailable") in kinds and (200, "trending") in kinds, figures
    # After the freeze the users with history are ranked again.
    thawed = [a for a in drill.answers if a.sent_s > drill.frozen_until_s + 1]
    assert any(a.kind == "ranked" for a in thawed), figures
