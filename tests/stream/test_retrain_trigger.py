"""The stream starts `streamrec retrain` as its own process when enough events arrived."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream.retrain_trigger import RetrainTrigger
from streamrec.events import Event, EventType
from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore


async def test_enough_new_events_start_a_cycle_and_its_outcome_is_counted(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        "trigger", registry=tmp_path / "registry", retrain_every_s=0, retrain_every_events=3
    )
    store = StateStore(settings)
    metrics = IngestMetrics(CollectorRegistry())
    trigger = RetrainTrigger(settings, store, metrics)
    try:
        await store.apply_events([Event(f"e{n}", "u", "i", EventType.CLICK, n) for n in range(2)])
        await trigger.tick()
        assert trigger.running is None  # 2 < 3: not due

        await store.apply_events([Event("e9", "u", "i", EventType.CLICK, 9)])
        await trigger.tick()
        assert trigger.running is not None
        await trigger.running
        # The archive of this pipeline is empty, so the cycle itself says: skipped.
        assert metrics.retrain.labels("skipped")._value.get() == 1
        assert await store.new_event_count() == 0
    finally:
        await store.redis.flushdb()
        await store.close()


async def test_an_unreachable_redis_skips_a_tick_instead_of_crashing_the_worker(
    make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 1: every Redis call fails with a ConnectionError.
    settings = make_settings(
        "trigger-down", registry=tmp_path / "registry", retrain_every_s=0, retrain_every_events=3
    ).model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    store = StateStore(settings)
    trigger = RetrainTrigger(settings, store, IngestMetrics(CollectorRegistry()))
    try:
        await trigger.tick()  # must not raise: a timer's exception stops the worker
        assert trigger.running is None
        assert "Redis unavailable" in caplog.text
    finally:
        await store.close()


async def test_the_canary_setting_starts_cycles_with_canary(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """STREAMREC_RETRAIN_CANARY_PERCENT: the command runs with `--canary 10` and
    answers as usual (an empty archive: skipped, not a failed command line)."""
    settings = make_settings(
        "trigger-canary", registry=tmp_path / "registry", retrain_every_s=0,
        retrain_every_events=1, retrain_canary_percent=10,
    )  # fmt: skip
    store = StateStore(settings)
    metrics = IngestMetrics(CollectorRegistry())
    trigger = RetrainTrigger(settings, store, metrics)
    try:
        await store.apply_events([Event("e1", "u", "i", EventType.CLICK, 1)])
        await trigger.tick()
        assert trigger.running is not None
        await trigger.running
        assert metrics.retrain.labels("skipped")._value.get() == 1
        assert metrics.retrain.labels("failed")._value.get() == 0
    finally:
        await store.redis.flushdb()
        await store.close()
