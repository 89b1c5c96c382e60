"""Tools for driving a real pipeline (its own topics and group, raw messages in, waits,
records read back) and the state Redis must hold, computed independently of
streamrec/state.py."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.scenarios.data import TAOBAO
from devtools.processes import ServiceProcess
from devtools.scrape import events_by_type_and_outcome
from streamrec import topics
from streamrec.archive import read_archive
from streamrec.event_files import taobao_event
from streamrec.events import Event, EventType, RejectReason
from streamrec.keys import item_popularity_key
from streamrec.producer import topic_for
from streamrec.settings import Settings


def pipeline_names(name: str) -> dict[str, str]:
    return topics.pipeline_names(f"test-{name}")


def _send_all(producer: KafkaProducer, messages: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    sent = 0
    for topic, key, value in messages:
        producer.send(topic, key=key, value=value)
        sent += 1
    producer.flush()
    return sent


def produce_raw(settings: Settings, messages: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    try:
        return _send_all(producer, messages)
    finally:
        producer.close()


def paced_producer(
    settings: Settings,
    messages: list[tuple[str, bytes | None, bytes]],
    batch: int = 500,
    rate: float | None = None,
) -> threading.Thread:
    """Produce `messages` from a thread, as a live stream would: in batches 0.1 s apart,
    or, with `rate`, at that many messages per second."""

    def run() -> None:
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5
        )
        started = time.monotonic()
        try:
            for start in range(0, len(messages), batch):
                _send_all(producer, messages[start : start + batch])
                due = started + (start + batch) / rate if rate else time.monotonic() + 0.1
                time.sleep(max(0.0, due - time.monotonic()))
        finally:
            producer.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# A synchronous client of the state: a single Redis or a Redis Cluster.
StateClient = redis.Redis | redis.RedisCluster


def state_client(settings: Settings) -> StateClient:
    """The tests' and drills' own client of the state Redis the settings name: a
    cluster client (every primary scanned, each key routed) for a cluster URL."""
    if settings.redis_is_cluster:
        return redis.RedisCluster.from_url(settings.redis_node_url)
    return redis.Redis.from_url(settings.redis_url)


def applied_count(client: StateClient) -> int:
    """Events applied to the state so far: the sum of every user's per-type counts."""
    total = 0
    for key in client.scan_iter("sr:u:*:meta", count=1000):
        meta = cast(dict[bytes, bytes], client.hgetall(key))  # no decode_responses: bytes
        total += sum(int(v) for k, v in meta.items() if k.startswith(b"n:"))
    return total


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def wait_counted(
    worker: ServiceProcess, total: int, timeout_s: float = 120.0
) -> dict[tuple[str, str], float]:
    deadline = time.monotonic() + timeout_s
    counted: dict[tuple[str, str], float] = {}
    while time.monotonic() < deadline:
        counted = events_by_type_and_outcome(worker.metrics_text())
        if sum(counted.values()) >= total:
            return counted
        time.sleep(0.25)
    raise AssertionError(f"worker counted {sum(counted.values())} of {total} messages: {counted}")


@dataclass(frozen=True)
class DlqRecord:
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def read_topic(
    settings: Settings, topic: str, expected: int, timeout_s: float = 30.0
) -> list[DlqRecord]:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[DlqRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for r in batch:
                    headers = {k: v.decode() for k, v in r.headers}
                    records.append(DlqRecord(r.key, r.value, headers))
        # Anything beyond `expected` that is already there is a bug too.
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(
                DlqRecord(r.key, r.value, {k: v.decode() for k, v in r.headers}) for r in batch
            )
        return records
    finally:
        consumer.close()


@dataclass
class ExpectedUser:
    recent: list[tuple[int, bytes, str]] = field(default_factory=list)  # (ts, member, event_id)
    purchased: dict[str, int] = field(default_factory=dict)
    counts_by_type: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    item_counts: dict[str, dict[str, int]] = field(default_factory=dict)


def expected_state(events: Iterable[Event], settings: Settings) -> dict[str, ExpectedUser]:
    """What the layout promises, computed from scratch. Caps assume arrival order =
    event-time order per user, which holds for the replays these tests use."""
    users: dict[str, ExpectedUser] = defaultdict(ExpectedUser)
    seen: set[str] = set()
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        user = users[e.user_id]
        event_id, item_id = e.event_id.encode(), e.item_id.encode()
        member = b"%d:%s%d:%s%s" % (
            len(event_id),
            event_id,
            len(item_id),
            item_id,
            e.type.value.encode(),
        )
        user.recent.append((e.ts_ms, member, e.event_id))
        user.counts_by_type[e.type.value] += 1
        user.item_counts.setdefault(e.item_id, {}).setdefault(e.type.value, 0)
        user.item_counts[e.item_id][e.type.value] += 1
        if e.type is EventType.PURCHASE:
            user.purchased[e.item_id] = max(e.ts_ms, user.purchased.get(e.item_id, 0))
    for user in users.values():
        user.recent = sorted(user.recent)[-settings.recent_events_max :]
    return dict(users)


def expected_popularity(
    events: Iterable[Event], half_life_ms: float
) -> dict[tuple[str, str], tuple[float, int]]:
    """(item, type) → (decayed count at the newest event time, that time)."""
    times: dict[tuple[str, str], list[int]] = defaultdict(list)
    seen: set[str] = set()
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            times[(e.item_id, e.type.value)].append(e.ts_ms)
    return {
        key: (sum(2 ** (-(max(ts) - t) / half_life_ms) for t in ts), max(ts))
        for key, ts in times.items()
    }


def taobao_events(start: int, count: int) -> list[Event]:
    events = []
    with open(TAOBAO, encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            if line_number > start + count:
                break
            if line_number > start:
                event = taobao_event(line_number, line)
                assert isinstance(event, Event)
                events.append(event)
    return events


def start_worker(settings: Settings, log_dir: Path) -> ServiceProcess:
    return ServiceProcess(
        settings, ["worker"], log_dir / f"{settings.app_id}.log", settings.worker_web_port
    ).start_ready()


def assert_state_is_exact(settings: Settings, events: list[Event]) -> None:
    client = state_client(settings)
    expected = expected_state(events, settings)
    users_in_redis = {
        key.decode().split("{", 1)[1].rsplit("}", 1)[0]
        for key in client.scan_iter("sr:u:*:meta", count=1000)
    }
    assert users_in_redis == set(expected)
    pipe = client.pipeline(transaction=False)
    for user_id in expected:
        pipe.zrange(f"sr:u:{{{user_id}}}:ev", 0, -1, withscores=True)
        pipe.zrange(f"sr:u:{{{user_id}}}:buy", 0, -1)
        pipe.hgetall(f"sr:u:{{{user_id}}}:cnt")
        pipe.hgetall(f"sr:u:{{{user_id}}}:meta")
    replies = iter(pipe.execute())
    for user_id, want in expected.items():
        recent, purchased, counts, meta = next(replies), next(replies), next(replies), next(replies)
        assert [(int(score), member) for member, score in recent] == [
            (ts, m) for ts, m, _ in want.recent
        ], user_id
        assert {p.decode() for p in purchased} == set(want.purchased), user_id
        got_counts = {k.decode(): int(v) for k, v in counts.items()}
        assert got_counts == {
            f"{t}:{item}": n
            for item, by_type in want.item_counts.items()
            for t, n in by_type.items()
        }, user_id
        assert {k.decode()[2:]: int(v) for k, v in meta.items() if k.startswith(b"n:")} == dict(
            want.counts_by_type
        ), user_id

    popularity = expected_popularity(events, settings.popularity_half_life_s * 1000)
    pipe = client.pipeline(transaction=False)
    for item_id, _ in popularity:
        pipe.hgetall(item_popularity_key(item_id))
    for (item_id, type_value), row in zip(popularity, pipe.execute(), strict=True):
        value, ref = popularity[(item_id, type_value)]
        got = float(row[type_value.encode()])
        assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12), item_id
        assert int(float(row[f"{type_value}:ref".encode()])) == ref


def assert_archive_is_exact(settings: Settings, events: list[Event]) -> None:
    """Every accepted event once, with the Kafka coordinates it came from."""
    archived = list(read_archive(settings.archive_root))
    assert sorted(a.event.event_id for a in archived) == sorted(e.event_id for e in events)
    by_id = {e.event_id: e for e in events}
    for record in archived:
        assert record.event == by_id[record.event.event_id]
        assert record.topic == topic_for(record.event.type, settings)
        assert 0 <= record.partition < settings.input_partitions and record.offset >= 0


def bad_message(kind: RejectReason, n: int) -> bytes:
    ok = {"event_id": f"bad-{n}", "user_id": "u", "item_id": "i", "type": "click", "ts": 1}
    variants: dict[RejectReason, Callable[[], bytes]] = {
        RejectReason.TOO_LARGE: lambda: orjson.dumps({**ok, "pad": "x" * 70_000}),
        RejectReason.NOT_UTF8: lambda: b'{"event_id": "\xff\xfe"}',
        RejectReason.MALFORMED_JSON: lambda: b'{"event_id": "a", ' + str(n).encode(),
        RejectReason.NOT_OBJECT: lambda: orjson.dumps([n, "click"]),
        RejectReason.MISSING_FIELD: lambda: orjson.dumps(
            {k: v for k, v in ok.items() if k != "user_id"}
        ),
        RejectReason.WRONG_TYPE: lambda: orjson.dumps({**ok, "item_id": n}),
        RejectReason.EMPTY_FIELD: lambda: orjson.dumps({**ok, "user_id": ""}),
        RejectReason.TOO_LONG: lambda: orjson.dumps({**ok, "item_id": "i" * 200}),
        RejectReason.BAD_TIMESTAMP: lambda: orjson.dumps({**ok, "ts": "not a time"}),
        RejectReason.FUTURE_TIMESTAMP: lambda: orjson.dumps({**ok, "ts": "2099-01-01T00:00:00Z"}),
        RejectReason.UNKNOWN_TYPE: lambda: orjson.dumps({**ok, "type": "like"}),
        RejectReason.BAD_VALUE: lambda: orjson.dumps({**ok, "price": -n - 1}),
    }
    return variants[kind]()
