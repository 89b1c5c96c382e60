"""Co-visitation through the real broker and a real worker: the links in Redis equal
the Python twin's, stay within `covis_neighbours_max`, and a worker killed mid-replay
counts no link twice."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest
import redis
from kafka import KafkaProducer

from bench.scenarios.workers import (
    StateClient,
    applied_count,
    start_worker,
    state_client,
    wait_until,
)
from devtools.scrape import events_by_type_and_outcome
from streamrec.covis import CovisTable
from streamrec.events import Event, EventType
from streamrec.keys import item_covis_key, item_popularity_key
from streamrec.producer import topic_for
from streamrec.settings import Settings
from streamrec.state import covis_rule
from streamrec.topics import ensure_topics
from tests.conftest import on_cluster

pytestmark = pytest.mark.integration

Links = dict[str, tuple[dict[str, float], int]]  # item -> (neighbour -> score, epoch ms)
START_MS = 1_700_000_000_000
ROUND_MS = 2_345_678  # ~39 minutes between rounds: the links decay visibly
TYPES = (EventType.CLICK, EventType.CLICK, EventType.VIEW, EventType.PURCHASE)


def replay_rounds(seed: int, rounds: int, users: int, items: int) -> list[list[Event]]:
    """Rounds of events, one per user at most, all of a round at the same time.

    A round is applied whole before the next is produced, so each user's events
    arrive in event-time order although clicks and purchases travel on different
    topics and partitions. Within a round the workers' order across users may vary,
    but an item's epoch (the time of its first link) and its scores do not depend on
    it: every event of the round has the same timestamp.
    """
    rng = random.Random(seed)
    out = []
    for r in range(rounds):
        ts_ms = START_MS + r * ROUND_MS
        chosen = rng.sample(range(users), rng.randint(max(1, users // 2), users))
        events = []
        for u in sorted(chosen):
            item_id, event_type = f"i{rng.randrange(items):02d}", rng.choice(TYPES)
            events.append(Event(f"cv-{seed}-{r}-{u}", f"u{u}", item_id, event_type, ts_ms))
        out.append(events)
    return out


def twin_links(settings: Settings, rounds: list[list[Event]]) -> Links:
    twin = CovisTable(covis_rule(settings))
    for event in (e for round_events in rounds for e in round_events):
        twin.apply(event.user_id, event.item_id, event.ts_ms)
    return twin.stored()


def stored_links(client: StateClient) -> Links:
    out: Links = {}
    for key in client.scan_iter("sr:i:*:cv", count=1000):
        item_id = key.decode().split("{", 1)[1].rsplit("}", 1)[0]
        assert key.decode() == item_covis_key(item_id)
        scores = cast(list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True))
        epoch = client.hget(item_popularity_key(item_id), "cv:epoch")
        assert epoch is not None, f"{item_id} has links but no cv:epoch"
        out[item_id] = ({m.decode(): s for m, s in scores}, int(epoch))
    return out


def assert_links_equal(got: Links, want: Links) -> None:
    assert set(got) == set(want)
    for item_id, (scores, epoch_ms) in want.items():
        assert got[item_id][1] == epoch_ms, item_id
        assert got[item_id][0] == pytest.approx(scores, rel=1e-12), item_id


@contextmanager
def producer_for(settings: Settings) -> Iterator[Callable[[list[Event]], None]]:
    """Send a list of events to their topics, keyed by user, and wait for the broker."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)

    def send(events: list[Event]) -> None:
        for event in events:
            producer.send(
                topic_for(event.type, settings), key=event.user_id.encode(), value=event.to_json()
            )
        producer.flush()

    try:
        yield send
    finally:
        producer.close()


def wait_applied(client: StateClient, count: int) -> None:
    wait_until(lambda: applied_count(client) >= count, 30, f"{count} events applied")


def pipeline_settings(
    make_settings: Callable[..., Settings], name: str, **overrides: object
) -> Settings:
    settings = make_settings(name, **overrides)
    ensure_topics(settings)
    return settings


def test_links_through_the_worker_equal_the_python_twin(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = pipeline_settings(make_settings, "covis-exact")
    client = redis.Redis.from_url(settings.redis_url)
    rounds = replay_rounds(seed=1, rounds=10, users=5, items=8)
    worker = start_worker(settings, tmp_path)
    try:
        applied = 0
        with producer_for(settings) as send:
            for round_events in rounds:
                send(round_events)
                applied += len(round_events)
                wait_applied(client, applied)
    finally:
        worker.stop()
    assert applied >= 30
    want = twin_links(settings, rounds)
    assert sum(len(scores) for scores, _ in want.values()) >= 20  # a replay worth checking
    assert_links_equal(stored_links(client), want)


def test_no_item_keeps_more_than_the_neighbour_cap(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = pipeline_settings(make_settings, "covis-cap", covis_neighbours_max=3)
    client = redis.Redis.from_url(settings.redis_url)
    # Order does not matter here: all at once, a dozen items per user.
    events = [e for round_events in replay_rounds(2, 40, 4, 12) for e in round_events]
    worker = start_worker(settings, tmp_path)
    try:
        with producer_for(settings) as send:
            send(events)
        wait_applied(client, len(events))
    finally:
        worker.stop()
    sizes = [len(scores) for scores, _ in stored_links(client).values()]
    assert len(sizes) == 12 and max(sizes) == 3, sizes  # the cap is reached, never passed


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
def test_a_worker_killed_mid_replay_counts_no_link_twice(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    kind: str,
) -> None:
    # Nothing is committed before the kill, so the new worker gets every event again;
    # on a cluster, the batch cut short is finished by its steps' markers.
    settings = pipeline_settings(make_settings, f"covis-crash-{kind}", commit_interval_s=120.0)
    if kind == "cluster":
        settings = on_cluster(settings, request.getfixturevalue("redis_cluster"))
    client = state_client(settings)
    rounds = replay_rounds(seed=3, rounds=12, users=5, items=8)
    kill_at = 6
    worker = start_worker(settings, tmp_path)
    try:
        applied = 0
        with producer_for(settings) as send:
            for r, round_events in enumerate(rounds):
                send(round_events)
                if r == kill_at:
                    # Once this round has started to land, before any offset is committed.
                    wait_applied(client, applied + 1)
                    worker.kill()
                    worker = start_worker(settings, tmp_path)
                applied += len(round_events)
                wait_applied(client, applied)
        counted = events_by_type_and_outcome(worker.metrics_text())
    finally:
        worker.stop()
    duplicates = sum(n for (_, outcome), n in counted.items() if outcome == "duplicate")
    assert duplicates > 0, f"the new worker was given nothing again: {counted}"
    assert_links_equal(stored_links(client), twin_links(settings, rounds))
