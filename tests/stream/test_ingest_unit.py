"""The batch handler against real Redis, without Faust: retries and DLQ routing."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream.ingest import Ingestor, IngestPolicy, RawMessage
from streamrec.devstack import free_port, wait_for_port
from streamrec.events import Event, EventType
from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore

SentToDlq = list[tuple[bytes | None, bytes, dict[str, bytes]]]


def message(offset: int, value: bytes) -> RawMessage:
    return RawMessage("clicks", 0, offset, b"k", value, timestamp_s=None)


def ingestor_for(settings: Settings) -> tuple[Ingestor, IngestMetrics, SentToDlq]:
    sent: SentToDlq = []

    async def send_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((key, value, dict(headers)))

    metrics = IngestMetrics(CollectorRegistry())
    policy = IngestPolicy(retry_max_s=0.2)
    return Ingestor(StateStore(settings), metrics, send_dlq, policy), metrics, sent


async def test_bad_messages_go_to_the_dlq_and_good_ones_to_redis(
    make_settings: Callable[..., Settings],
) -> None:
    ingestor, metrics, sent = ingestor_for(make_settings("unit"))
    good = Event("e1", "u1", "i1", EventType.CLICK, 1000).to_json()
    await ingestor.handle_batch([message(0, good), message(1, b"{oops"), message(2, good)])
    assert [(v, h["streamrec.reason"], h["streamrec.source.offset"]) for _, v, h in sent] == [
        (b"{oops", b"malformed_json", b"1")
    ]
    assert metrics.events.labels("click", "accepted")._value.get() == 1
    assert metrics.events.labels("click", "duplicate")._value.get() == 1
    assert metrics.dlq.labels("malformed_json")._value.get() == 1
    state = await ingestor.state.read_user("u1")
    assert [e.event_id for e in state.recent_events] == ["e1"]
    await ingestor.state.redis.flushdb()
    await ingestor.state.close()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_a_batch_waits_for_redis_to_come_back_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", kafka_bootstrap="unused:1")
    ingestor, metrics, _ = ingestor_for(settings)
    events = [Event(f"e{n}", "u1", f"i{n}", EventType.CLICK, 1000 + n) for n in range(5)]
    task = asyncio.create_task(
        ingestor.handle_batch([message(n, e.to_json()) for n, e in enumerate(events)])
    )
    await asyncio.sleep(1.0)
    assert not task.done(), "the batch must not be acknowledged while Redis is down"
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    redis = subprocess.Popen([*argv, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        await asyncio.wait_for(task, timeout=15)
        state = await ingestor.state.read_user("u1")
        assert [e.event_id for e in state.recent_events] == [f"e{n}" for n in range(5)]
        assert metrics.state_write_retries._value.get() >= 1
    finally:
        await ingestor.state.close()
        redis.terminate()
        redis.wait()


async def test_a_click_on_a_recently_recommended_item_counts_as_a_hit(
    make_settings: Callable[..., Settings],
) -> None:
    ingestor, metrics, _ = ingestor_for(make_settings("unit", hit_window_s=60))
    store = ingestor.state
    await store.record_recommended("u1", ["shown", "also"], now_ms=1_000_000)
    await store.record_recommended("u2", ["other"], now_ms=1_000_000)
    clicks = [
        Event("h1", "u1", "shown", EventType.CLICK, 1_030_000),  # hit
        Event("h1", "u1", "shown", EventType.CLICK, 1_030_000),  # duplicate: not again
        Event("h2", "u1", "also", EventType.CLICK, 1_061_000),  # after the window
        Event("h3", "u1", "other", EventType.CLICK, 1_030_000),  # shown to someone else
        Event("h4", "u1", "also", EventType.PURCHASE, 1_030_000),  # not a click
        Event("h5", "u1", "also", EventType.CLICK, 999_000),  # before it was shown
    ]
    await ingestor.handle_batch([message(n, e.to_json()) for n, e in enumerate(clicks)])
    assert metrics.online_hits._value.get() == 1
    assert metrics.events.labels("click", "accepted")._value.get() == 4
    await store.redis.flushdb()
    await store.close()
