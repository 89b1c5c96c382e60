"""Events in through the real broker, state out of the real Redis, bad input in the DLQ."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.scenarios.workers import (
    applied_count,
    assert_archive_is_exact,
    assert_state_is_exact,
    bad_message,
    paced_producer,
    produce_raw,
    read_topic,
    start_worker,
    taobao_events,
    wait_counted,
)
from devtools.processes import ServiceProcess
from streamrec.events import Event, RejectReason
from streamrec.notices import StateChanges
from streamrec.producer import topic_for
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.conftest import on_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(params=["standalone", "cluster"])
def pipeline(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[Settings, ServiceProcess]]:
    """A worker on a single Redis, then on a Redis Cluster (its cluster apply)."""
    settings = make_settings(f"ingest-{request.param}")  # topics of its own
    if request.param == "cluster":
        settings = on_cluster(settings, request.getfixturevalue("redis_cluster"))
    ensure_topics(settings)
    worker = start_worker(settings, tmp_path)
    try:
        yield settings, worker
    finally:
        worker.stop()


def assert_every_change_is_announced(settings: Settings, events: list[Event]) -> None:
    """Every user with applied events appears in a state-change notice, with the
    newest event time applied."""
    newest: dict[str, int] = {}
    for event in events:
        newest[event.user_id] = max(newest.get(event.user_id, 0), event.ts_ms)
    # Everything the topic holds, read for a few seconds.
    records = read_topic(settings, settings.topic_state_changes, expected=10**9, timeout_s=5)
    announced: dict[str, int] = {}
    for record in records:
        notice = StateChanges.from_json(record.value)
        for user, last_ts in notice.last_ts_ms.items():
            announced[user] = max(announced.get(user, 0), last_ts)
    assert announced == newest


def assert_lag_reaches_zero(worker: ServiceProcess, settings: Settings) -> None:
    """Once everything is applied and committed, the lag gauge says so."""
    deadline = time.monotonic() + 20
    lag: dict[str, float] = {}
    while time.monotonic() < deadline:
        lag = {}
        for family in text_string_to_metric_families(worker.metrics_text()):
            if family.name == "streamrec_consumer_lag_messages":
                for sample in family.samples:
                    if sample.labels["topic"] in settings.input_topics:
                        lag[f"{sample.labels['topic']}/{sample.labels['partition']}"] = sample.value
        if len(lag) == 2 * settings.input_partitions and not any(lag.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"consumer lag did not reach 0: {lag}")


def test_taobao_replay_with_bad_and_duplicate_events_gives_exact_state_and_full_dlq(
    pipeline: tuple[Settings, ServiceProcess],
) -> None:
    settings, worker = pipeline
    rng = random.Random(42)
    events = taobao_events(0, 2000)
    messages = [(topic_for(e.type, settings), e.user_id.encode(), e.to_json()) for e in events]
    duplicates = [messages[i] for i in rng.sample(range(len(events)), 100)]
    kinds = list(RejectReason)
    bad = [
        (
            rng.choice(settings.input_topics),
            f"bad-{n}".encode(),
            bad_message(kinds[n % len(kinds)], n),
            kinds[n % len(kinds)],
        )
        for n in range(200)
    ]
    stream = messages + duplicates + [(t, k, v) for t, k, v, _ in bad]
    # Keep each user's own events in order (the key guarantees it in Kafka too);
    # interleave the duplicates and the bad ones anywhere.
    positions = sorted(rng.sample(range(len(stream)), len(duplicates) + len(bad)))
    tail = duplicates + [(t, k, v) for t, k, v, _ in bad]
    rng.shuffle(tail)
    ordered: list[tuple[str, bytes | None, bytes]] = []
    head = iter(messages)
    extra = iter(tail)
    positions_set = set(positions)
    for i in range(len(stream)):
        ordered.append(next(extra) if i in positions_set else next(head))
    assert produce_raw(settings, ordered) == 2300

    counted = wait_counted(worker, total=2300)
    assert counted[("invalid", "rejected")] == 200
    assert sum(v for (t, o), v in counted.items() if o == "duplicate") == 100
    assert sum(v for (t, o), v in counted.items() if o == "accepted") == 2000

    assert_state_is_exact(settings, events)
    assert_lag_reaches_zero(worker, settings)
    assert_archive_is_exact(settings, events)
    assert_every_change_is_announced(settings, events)

    dlq = read_topic(settings, settings.topic_dlq, expected=200)
    assert len(dlq) == 200
    want = Counter((v, kind.value) for _, _, v, kind in bad)
    got = Counter((r.value, r.headers["streamrec.reason"]) for r in dlq)
    assert got == want
    for record in dlq:
        assert record.headers["streamrec.source.topic"] in settings.input_topics
        assert int(record.headers["streamrec.source.offset"]) >= 0
        assert record.headers["streamrec.detail"]
        assert record.key is not None and record.key.startswith(b"bad-")


def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("crash", batch_max_events=50, commit_interval_s=2.0)
    ensure_topics(settings)
    events = taobao_events(2000, 4000)
    messages: list[tuple[str, bytes | None, bytes]] = [
        (topic_for(e.type, settings), e.user_id.encode(), e.to_json()) for e in events
    ]

    worker = start_worker(settings, tmp_path)
    client = redis.Redis.from_url(settings.redis_url)

    def applied() -> int:
        return applied_count(client)

    # 20 paced batches (2 s at least) and a kill after a fifth: counting what was
    # applied scans every user, which takes a while on a loaded machine.
    producer = paced_producer(settings, messages, batch=100)
    try:
        deadline = time.monotonic() + 60
        while applied() < 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert applied() >= 400, "the worker never got going"
        worker.kill()
        killed_at = applied()
        assert killed_at < len(events), "the worker finished before it could be killed"
    finally:
        producer.join()

    worker = start_worker(settings, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while applied() < len(events) and time.monotonic() < deadline:
            time.sleep(0.25)
        time.sleep(1.0)  # anything applied twice would show up now
        assert_state_is_exact(settings, events)
        assert_archive_is_exact(settings, events)
    finally:
        worker.stop()
