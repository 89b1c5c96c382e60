"""Catalogue records in through the real broker and worker, the catalogue out of the
real Redis, bad records in the DLQ; and a Taobao file's catalogue loaded end to end."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import cast

import orjson
import pytest
import redis

from bench.scenarios.data import TAOBAO
from bench.scenarios.workers import paced_producer, read_topic, start_worker
from devtools.processes import ServiceProcess
from devtools.scrape import counter_total
from streamrec.catalogue import Catalogue
from streamrec.keys import (
    CATALOGUE_CHANGES_KEY,
    CATALOGUE_DELETIONS_KEY,
    CATALOGUE_ITEMS_KEY,
    CATALOGUE_MARKER,
    CATALOGUE_SEQ_KEY,
    CATALOGUE_UNAVAILABLE_KEY,
)
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.conftest import on_cluster

pytestmark = pytest.mark.integration

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z
OUTCOMES = ("applied", "deleted", "duplicate", "stale", "rejected")


def record(item_id: str, dt_ms: int, **fields: object) -> bytes:
    return orjson.dumps({"item_id": item_id, "ts": T + dt_ms, **fields})  # fields may set ts


I1_NEWEST = record(
    "i1", 3000, category="boots", title="Trail runner", price=49.0,
    tags=["red", "gore-tex"], attributes={"brand": "acme", "size": 42, "waterproof": True},
)  # fmt: skip
# (key, value, message timestamp ms, what the worker must make of it)
MIX: list[tuple[bytes | None, bytes | None, int | None, str]] = [
    (b"i1", record("i1", 1000, category="shoes", title="Trail", price=59.5), None, "applied"),
    (b"i2", record("i2", 1000, category=["shoes", "sale"]), None, "applied"),
    (b"i3", record("i3", 1000, category="shoes"), None, "applied"),
    (b"i4", record("i4", 1000, available=False, category="hats"), None, "applied"),
    (b"i1", I1_NEWEST, None, "applied"),
    (b"i1", record("i1", 2000, category="shoes"), None, "stale"),  # older, arriving late
    (b"i1", I1_NEWEST, None, "duplicate"),  # a redelivery
    (b"i2", record("i2", 2000, deleted=True), None, "deleted"),
    (b"i3", None, T + 5000, "deleted"),  # a tombstone, dated by its message timestamp
    (b"i3", record("i3", 4000, category="shoes"), None, "stale"),  # older than the tombstone
    (b"i5", record("i5", 1500, category="shoes", tags=["new"]), None, "applied"),
    (b"bad-json", b'{"item_id": ', None, "malformed_json"),
    (b"i6", record("i7", 1000), None, "bad_value"),  # the key is another item
    (b"i8", record("i8", 1000, price=-1), None, "bad_value"),
    (b"i9", record("i9", 0, ts="2099-01-01T00:00:00Z"), None, "future_timestamp"),
    (None, record("i10", 1000), None, "missing_field"),  # no key
]  # fmt: skip


def produce_mix(settings: Settings) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    try:
        for key, value, timestamp_ms, _ in MIX:
            producer.send(settings.topic_items, key=key, value=value, timestamp_ms=timestamp_ms)
        producer.flush()
    finally:
        producer.close()


def wait_items_counted(
    worker: ServiceProcess, total: int, timeout_s: float = 90.0
) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    counted: dict[str, float] = {}
    while time.monotonic() < deadline:
        text = worker.metrics_text()
        counted = {o: counter_total(text, "streamrec_item_records", outcome=o) for o in OUTCOMES}
        if sum(counted.values()) >= total:
            return counted
        time.sleep(0.25)
    raise AssertionError(f"worker counted {counted} of {total} item records")


def catalogue_keys(settings: Settings) -> dict[str, dict[str, str | int]]:
    """Every key in the pipeline's Redis database, with its content (hashes and sorted
    sets are all the catalogue writes, beside its marker, its two counters and its
    change counter, left out here and checked by the caller)."""
    client = redis.Redis.from_url(settings.redis_url)
    content: dict[str, dict[str, str | int]] = {}
    for key in client.scan_iter("*"):
        if key == CATALOGUE_MARKER.encode():
            assert client.get(key) == b"1"
            continue
        if key in (
            CATALOGUE_ITEMS_KEY.encode(),
            CATALOGUE_UNAVAILABLE_KEY.encode(),
            CATALOGUE_SEQ_KEY.encode(),
        ):
            continue
        kind = client.type(key)
        assert kind in (b"hash", b"zset"), (key, kind)
        if kind == b"hash":
            # The stubs type every reply as bytes or str; this client does not decode.
            fields = cast(dict[bytes, bytes], client.hgetall(key))
            content[key.decode()] = {k.decode(): v.decode() for k, v in fields.items()}
        else:
            rows = cast(list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True))
            content[key.decode()] = {member.decode(): int(score) for member, score in rows}
    return content


def test_records_deletes_late_and_bad_records_through_the_worker(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("catalogue", item_tombstone_ttl_s=3600)
    ensure_topics(settings)
    worker = start_worker(settings, tmp_path)
    try:
        produce_mix(settings)
        counted = wait_items_counted(worker, total=len(MIX))
        want = Counter(o if o in OUTCOMES else "rejected" for *_, o in MIX)
        assert counted == {o: float(want[o]) for o in OUTCOMES}
        text = worker.metrics_text()
        for reason in ("malformed_json", "bad_value", "future_timestamp", "missing_field"):
            expected = sum(1 for *_, o in MIX if o == reason)
            assert counter_total(text, "streamrec_dlq", reason=reason) == expected, reason
        assert "streamrec_item_record_to_state_seconds_count 8.0" in text
        # Live: i1, i4 (unavailable) and i5; i2 and i3 deleted.
        deadline = time.monotonic() + 20
        while "streamrec_catalogue_items 3.0" not in worker.metrics_text():
            assert time.monotonic() < deadline, "the catalogue gauge did not reach 3"
            time.sleep(0.25)
        assert "streamrec_catalogue_unavailable_items 1.0" in worker.metrics_text()
    finally:
        worker.stop()

    stored = catalogue_keys(settings)
    # The change log holds every item at its newest record, the deleted ones too
    # (a follower learns of the delete) while their markers live.
    assert set(stored.pop(CATALOGUE_CHANGES_KEY)) == {"i1", "i2", "i3", "i4", "i5"}
    assert stored.pop(CATALOGUE_DELETIONS_KEY) == {"i2": T + 2000, "i3": T + 5000}
    fingerprints: dict[str, str] = {}
    for key, fields in stored.items():
        if "info" in key:
            fingerprint = fields.pop("fp")
            assert isinstance(fingerprint, str), (key, fingerprint)
            fingerprints[key] = fingerprint
    assert stored == {
        "sr:i:{i1}:info": {
            "ts": str(T + 3000), "available": "1", "category": '["boots"]',
            "title": "Trail runner", "price": "49.0", "tags": '["red","gore-tex"]',
            "attributes": '{"brand":"acme","size":42,"waterproof":true}',
        },
        "sr:i:{i2}:info": {"ts": str(T + 2000), "available": "0", "deleted": "1"},
        "sr:i:{i3}:info": {"ts": str(T + 5000), "available": "0", "deleted": "1"},
        "sr:i:{i4}:info": {"ts": str(T + 1000), "available": "0", "category": '["hats"]'},
        "sr:i:{i5}:info": {
            "ts": str(T + 1500), "available": "1", "category": '["shoes"]', "tags": '["new"]',
        },
        "sr:c:{boots}:avail": {"i1": T + 3000},
        "sr:c:{shoes}:avail": {"i5": T + 1500},
    }  # fmt: skip
    assert fingerprints["sr:i:{i2}:info"] == fingerprints["sr:i:{i3}:info"] == "-"
    assert all(len(fingerprints[f"sr:i:{{{i}}}:info"]) == 16 for i in ("i1", "i4", "i5"))
    client = redis.Redis.from_url(settings.redis_url)
    assert client.mget(CATALOGUE_ITEMS_KEY, CATALOGUE_UNAVAILABLE_KEY) == [b"3", b"1"]
    assert 0 < client.ttl("sr:i:{i3}:info") <= 3600 and client.ttl("sr:i:{i1}:info") == -1

    dlq = read_topic(settings, settings.topic_dlq, expected=5)
    assert Counter((r.key, r.value, r.headers["streamrec.reason"]) for r in dlq) == Counter(
        (key, value, reason) for key, value, _, reason in MIX if reason not in OUTCOMES
    )
    for letter in dlq:
        assert letter.headers["streamrec.source.topic"] == settings.topic_items
        assert int(letter.headers["streamrec.source.offset"]) >= 0
        assert letter.headers["streamrec.detail"]


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
async def test_the_read_api_sees_what_the_worker_wrote(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    kind: str,
) -> None:
    settings = make_settings(f"catalogue-read-{kind}")
    if kind == "cluster":
        settings = on_cluster(settings, request.getfixturevalue("redis_cluster"))
    ensure_topics(settings)
    worker = start_worker(settings, tmp_path)
    try:
        produce_mix(settings)
        wait_items_counted(worker, total=len(MIX))
    finally:
        worker.stop()
    catalogue = Catalogue(settings)
    try:
        ids = ["i1", "i2", "i3", "i4", "i5", "i7", "never-seen"]
        assert await catalogue.available(ids) == [True, False, False, False, True, True, True]
        assert await catalogue.categories(ids) == [
            ("boots",), (), (), ("hats",), ("shoes",), (), (),
        ]  # fmt: skip
        assert await catalogue.items_in_category("shoes", 10) == ["i5"]
        assert await catalogue.items_in_category("hats", 10) == []
    finally:
        await catalogue.close()


def test_a_taobao_files_catalogue_loaded_and_applied(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("catalogue-taobao")
    ensure_topics(settings)
    path = tmp_path / "taobao.csv"
    lines = TAOBAO.read_text().splitlines()[:300]
    path.write_text("\n".join(lines) + "\n")
    worker = start_worker(settings, tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cli", "items", "load", "--from-taobao", str(path)],
            env=settings.child_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        first_seen: dict[str, tuple[int, str]] = {}
        for line in lines:
            _, item, category, _, seconds = line.split(",")
            first_seen.setdefault(item, (int(seconds) * 1000, category))
        assert f"sent {len(first_seen)} item records" in done.stderr
        counted = wait_items_counted(worker, total=len(first_seen))
        assert counted["applied"] == len(first_seen) and counted["rejected"] == 0
    finally:
        worker.stop()
    client = redis.Redis.from_url(settings.redis_url)
    for item, (ts, category) in first_seen.items():
        fields = client.hgetall(f"sr:i:{{{item}}}:info")
        assert (fields[b"ts"], fields[b"category"], fields[b"available"]) == (
            str(ts).encode(), f'["{category}"]'.encode(), b"1",
        ), item  # fmt: skip
        assert client.zscore(f"sr:c:{{{category}}}:avail", item) == ts
    by_category = Counter(category for _, category in first_seen.values())
    for category, count in by_category.items():
        assert client.zcard(f"sr:c:{{{category}}}:avail") == count


def test_a_worker_killed_mid_load_loses_nothing_and_ends_with_the_newest_records(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("catalogue-crash", batch_max_events=50, commit_interval_s=2.0)
    ensure_topics(settings)
    # 300 items, five versions each in time order, moving between categories and stock.
    versions = [
        (f"i{n}", v, f"c{(n + v) % 7}", (n + v) % 4 != 0) for v in range(5) for n in range(300)
    ]
    messages: list[tuple[str, bytes | None, bytes]] = [
        (settings.topic_items, item.encode(), record(item, v, category=c, available=a))
        for item, v, c, a in versions
    ]
    worker = start_worker(settings, tmp_path)
    producer = paced_producer(settings, messages, batch=50, rate=500)  # 3 s
    try:
        deadline = time.monotonic() + 60
        while (seen := counter_total(worker.metrics_text(), "streamrec_item_records")) < 300:
            assert time.monotonic() < deadline, "the worker never got going"
            time.sleep(0.05)
        worker.kill()
        assert seen < len(messages), "the worker finished before it could be killed"
    finally:
        producer.join()
    worker = start_worker(settings, tmp_path)
    try:
        # What the killed worker had not committed comes again: duplicates, not losses.
        client = redis.Redis.from_url(settings.redis_url)
        newest = {item: (v, c, a) for item, v, c, a in versions}  # the last version wins
        deadline = time.monotonic() + 90
        while any(
            client.hget(f"sr:i:{{{item}}}:info", "ts") != str(T + 4).encode() for item in newest
        ):
            assert time.monotonic() < deadline, "the restarted worker did not catch up"
            time.sleep(0.25)
        text = worker.metrics_text()
        assert counter_total(text, "streamrec_item_records", outcome="rejected") == 0
    finally:
        worker.stop()
    stored = catalogue_keys(settings)
    assert set(stored.pop(CATALOGUE_CHANGES_KEY)) == set(newest)
    index: dict[str, dict[str, str | int]] = {}
    for item, (v, category, available) in newest.items():
        fields = stored.pop(f"sr:i:{{{item}}}:info")
        assert (fields["ts"], fields["available"], fields["category"]) == (
            str(T + v), "1" if available else "0", f'["{category}"]',
        ), item  # fmt: skip
        if available:
            index.setdefault(f"sr:c:{{{category}}}:avail", {})[item] = T + v
    assert stored == index  # the category sets, exactly, and nothing else
