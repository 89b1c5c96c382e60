"""The batch handler against real Redis, without Faust: retries and DLQ routing."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.exceptions import BusyLoadingError, ResponseError

from devtools.devstack import free_port, wait_for_port
from stream.ingest import Ingestor, IngestPolicy, RawMessage
from streamrec.events import Event, EventType
from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore, unavailable_reason

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
    server = subprocess.Popen([*argv, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        await asyncio.wait_for(task, timeout=15)
        state = await ingestor.state.read_user("u1")
        assert [e.event_id for e in state.recent_events] == [f"e{n}" for n in range(5)]
        assert metrics.state_write_retries._value.get() >= 1
    finally:
        await ingestor.state.close()
        server.terminate()
        server.wait()


async def test_a_click_on_a_recently_recommended_item_counts_as_a_hit(
    make_settings: Callable[..., Settings],
) -> None:
    ingestor, metrics, _ = ingestor_for(make_settings("unit", hit_window_s=60))
    store = ingestor.state
    # Answers are remembered for users with state only.
    await store.apply_events([Event(f"seed-{u}", u, "x", EventType.VIEW, 1) for u in ("u1", "u2")])
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


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Settings]:
    """A Redis of this test's own, to fill up, demote or keep busy."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    server = subprocess.Popen([*argv, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield Settings(redis_url=f"redis://127.0.0.1:{port}/0", kafka_bootstrap="unused:1")
    finally:
        server.terminate()
        server.wait()


def _busy_script(settings: Settings, seconds: float) -> None:
    """Keep Redis inside one script for `seconds`: every other client meets BUSY."""
    spin = (
        "local t0 = redis.call('TIME'); local start = t0[1] * 1e6 + t0[2]; "
        "while true do local t = redis.call('TIME'); "
        "if t[1] * 1e6 + t[2] - start > tonumber(ARGV[1]) then return 1 end end"
    )
    redis.Redis.from_url(settings.redis_url).eval(spin, 0, int(seconds * 1e6))


@pytest.mark.parametrize("outage", ["oom", "readonly", "busy"])
async def test_redis_taking_no_writes_is_an_outage_waited_out_not_a_dlq_flood(
    own_redis: Settings, outage: str
) -> None:
    ingestor, metrics, sent = ingestor_for(own_redis)
    admin = redis.Redis.from_url(own_redis.redis_url)
    first = [Event(f"a{n}", f"u{n % 3}", f"i{n}", EventType.CLICK, 1000 + n) for n in range(5)]
    await ingestor.handle_batch([message(n, e.to_json()) for n, e in enumerate(first)])
    # 250 events: three script calls, so a retry must redo only the ones refused.
    later = [Event(f"b{n}", f"u{n % 3}", f"i{n}", EventType.CLICK, 2000 + n) for n in range(250)]
    busy: asyncio.Task[None] | None = None
    if outage == "oom":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
    elif outage == "readonly":
        admin.replicaof("127.0.0.1", free_port())  # a primary that is not there
    else:
        admin.config_set("busy-reply-threshold", 50)
        busy = asyncio.create_task(asyncio.to_thread(_busy_script, own_redis, 3.0))
        await asyncio.sleep(0.5)
    task = asyncio.create_task(
        ingestor.handle_batch([message(10 + n, e.to_json()) for n, e in enumerate(later)])
    )
    try:
        await asyncio.sleep(1.5)
        assert not task.done(), "the batch must wait while Redis takes no writes"
        assert ingestor.state_unavailable == outage
        assert metrics.state_write_blocked.labels(outage)._value.get() == 1
        if outage == "oom":
            admin.config_set("maxmemory", 0)
        elif outage == "readonly":
            admin.replicaof("NO", "ONE")
        await asyncio.wait_for(task, timeout=20)
    finally:
        if busy is not None:
            await busy
    assert sent == [], "an outage is no reason to dead-letter an event"
    assert metrics.events.labels("click", "accepted")._value.get() == 255
    assert metrics.events.labels("click", "duplicate")._value.get() == 0
    assert metrics.state_write_blocked.labels(outage)._value.get() == 0
    assert ingestor.state_unavailable is None
    users = [await ingestor.state.read_user(f"u{n}") for n in range(3)]
    assert sum(u.counts_by_type["click"] for u in users) == 255
    await ingestor.state.close()


def test_redis_errors_are_told_apart_outage_or_content() -> None:
    assert unavailable_reason(BusyLoadingError("Redis is loading the dataset")) == "loading"
    assert unavailable_reason(ResponseError("BUSY Redis is busy running a script")) == "busy"
    assert unavailable_reason(ResponseError("MISCONF unable to persist")) == "refused"
    assert unavailable_reason(ResponseError("ERR Error running script: bad argument")) is None


async def test_a_key_that_is_not_the_user_is_counted_and_logged_but_the_event_applied(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    ingestor, metrics, sent = ingestor_for(make_settings("unit"))
    events = [Event(f"k{n}", f"u{n}", "i", EventType.CLICK, 1000 + n) for n in range(6)]
    keys: list[bytes | None] = [b"u0", None, b"someone-else", b"u3", None, b"u1"]
    messages = [
        RawMessage("clicks", 0, n, key, e.to_json(), timestamp_s=None)
        for n, (key, e) in enumerate(zip(keys, events, strict=True))
    ]
    with caplog.at_level(logging.WARNING, logger="stream.ingest"):
        await ingestor.handle_batch(messages)
    assert metrics.key_mismatch.labels("missing")._value.get() == 2
    assert metrics.key_mismatch.labels("other_user")._value.get() == 2
    assert metrics.events.labels("click", "accepted")._value.get() == 6
    assert sent == []
    # Rate-limited: one line for the batch, with an example and the count.
    lines = [r.getMessage() for r in caplog.records if "key" in r.getMessage()]
    assert len(lines) == 1 and "4 messages" in lines[0] and "clicks[0]@1" in lines[0]
    await ingestor.state.redis.flushdb()
    await ingestor.state.close()


async def test_a_duplicate_id_with_other_content_is_a_conflict_counted_and_logged_once(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    ingestor, metrics, sent = ingestor_for(make_settings("unit"))
    original = Event("e1", "u1", "i1", EventType.CLICK, 1000)
    same = Event("e1", "u1", "i1", EventType.CLICK, 1000)
    other = Event("e1", "u1", "i2", EventType.PURCHASE, 2000)
    with caplog.at_level(logging.WARNING, logger="stream.ingest"):
        for n, event in enumerate([original, same, other, other]):
            await ingestor.handle_batch([message(n, event.to_json())])
    assert metrics.events.labels("click", "accepted")._value.get() == 1
    assert metrics.events.labels("click", "duplicate")._value.get() == 1
    assert metrics.events.labels("purchase", "conflict")._value.get() == 2
    conflicts = [r.getMessage() for r in caplog.records if "conflict" in r.getMessage()]
    assert len(conflicts) == 1 and "e1" in conflicts[0]
    state = await ingestor.state.read_user("u1")
    assert [(e.item_id, e.type) for e in state.recent_events] == [("i1", EventType.CLICK)]
    assert sent == []
    await ingestor.state.redis.flushdb()
    await ingestor.state.close()
