"""Test-side tools for driving a real pipeline: produce raw messages, wait, read back,
and compute the state Redis must hold, independently of streamrec/state.py."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamrec.events import Event, EventType
from streamrec.processes import ServiceProcess
from streamrec.scrape import events_by_type_and_outcome
from streamrec.settings import Settings


def produce_raw(settings: Settings, messages: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    sent = 0
    for topic, key, value in messages:
        producer.send(topic, key=key, value=value)
        sent += 1
    producer.flush()
    producer.close()
    return sent


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
