"""A real worker whose registry pointer names a bundle that cannot be opened keeps
ingesting: events fold into Redis, the refusal is counted and logged once, and the
next good version is picked up for the user-vector refresh."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from bench.scenarios.models import publish, serving_models
from bench.scenarios.workers import (
    applied_count,
    produce_raw,
    start_worker,
    wait_counted,
    wait_until,
)
from devtools.scrape import counter_total
from streamrec.events import Event, EventType
from streamrec.producer import topic_for
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.streamrec.bad_bundles import spoil

pytestmark = pytest.mark.integration


def clicks(user_id: str, items: list[str], start: int) -> list[Event]:
    now_ms = int(time.time() * 1000)
    return [
        Event(f"{user_id}-{start + n}", user_id, item, EventType.CLICK, now_ms + n)
        for n, item in enumerate(items)
    ]


def test_a_worker_whose_pointer_names_a_bad_bundle_keeps_ingesting(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    models = serving_models()
    items = list(models.vocab.item_ids)
    root = tmp_path / "registry"
    bad = publish(models, root).version
    spoil(root, bad, "manifest_without_max_len")
    settings = make_settings(
        "bad-bundle", registry=root, registry_poll_s=0.2, worker_refresh_vectors=True
    )
    ensure_topics(settings)
    state = redis.Redis.from_url(settings.redis_url)
    worker = start_worker(settings, tmp_path)
    try:
        events = clicks("ann", items[:5], 0) + clicks("ben", items[5:8], 0)
        messages = [(topic_for(e.type, settings), e.user_id.encode(), e.to_json()) for e in events]
        assert produce_raw(settings, messages) == len(events)
        counted = wait_counted(worker, total=len(events))
        assert sum(v for (_, outcome), v in counted.items() if outcome == "accepted") == 8
        assert applied_count(state) == 8
        metrics = worker.metrics_text()
        assert counter_total(metrics, "streamrec_worker_model_swaps", outcome="refused") == 1
        assert worker.proc is not None and worker.proc.poll() is None

        good = publish(models, root, bad).version
        wait_until(
            lambda: f'streamrec_worker_model_info{{version="{good}"}} 1.0' in worker.metrics_text(),
            30,
            "the worker to load the next good version",
        )
        more = clicks("ann", items[8:10], 10)
        produce_raw(
            settings, [(topic_for(e.type, settings), e.user_id.encode(), e.to_json()) for e in more]
        )
        wait_counted(worker, total=len(events) + len(more))
        assert applied_count(state) == 10
        metrics = worker.metrics_text()
        assert counter_total(metrics, "streamrec_worker_model_swaps", outcome="refused") == 1
        assert counter_total(metrics, "streamrec_worker_model_swaps", outcome="swapped") == 1
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert log.count(f"model {bad} refused") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
