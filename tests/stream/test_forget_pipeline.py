"""Forgetting a user through the real broker, worker and Redis: the request is sent
while the user's events are still on Kafka, unconsumed, and afterwards nothing of
the user is left in Redis, the archive or the next bundle's training set."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from bench.scenarios.models import TINY_PLAN
from bench.scenarios.workers import produce_raw, read_topic, start_worker, taobao_events, wait_until
from devtools.scrape import counter_total
from retrain import cycle, training
from streamrec import registry
from streamrec.archive import read_archive, read_forgotten, segments
from streamrec.forget import group_committed, send_forget
from streamrec.keys import is_user_key
from streamrec.producer import topic_for
from streamrec.settings import Settings
from streamrec.topics import ensure_topics

pytestmark = pytest.mark.integration


def archived_user_ids(settings: Settings) -> Counter[str]:
    """Every row on disk, read as bytes: not through the reader, which filters."""
    found: Counter[str] = Counter()
    for _, folder in segments(settings.archive_root):
        for path in folder.glob("*.jsonl"):
            for line in path.read_bytes().splitlines():
                found[orjson.loads(line)["event"]["user_id"]] += 1
    return found


def test_a_forget_sent_behind_the_users_events_leaves_nothing_of_them(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings("forget")
    ensure_topics(settings)
    events = taobao_events(0, 3000)
    # The user with the most events among those whose last event is near the end of
    # the stream: applied last, so a forget taken early would be undone by them.
    last_index = {e.user_id: n for n, e in enumerate(events)}
    per_user = Counter(e.user_id for e in events)
    gone = max((u for u, n in last_index.items() if n > 2700), key=lambda u: per_user[u])
    assert per_user[gone] >= 2
    messages = [(topic_for(e.type, settings), e.user_id.encode(), e.to_json()) for e in events]
    produce_raw(settings, messages)
    # Every event is on Kafka and none consumed: the worker is not running yet.
    request = send_forget(settings, gone)
    assert sum(h.offset for h in request.horizon) > 0
    send_forget(settings, "never-seen")
    bad = [
        (settings.topic_users_forget, b"u-bad", b'{"user_id": "u-bad", '),
        (settings.topic_users_forget, b"u-key", orjson.dumps({"user_id": "u-other"})),
        # Horizons no wait could reach: refused, not waited for (the agent goes on).
        (settings.topic_users_forget, b"u-far", orjson.dumps({"user_id": "u-far", "horizon": [
            {"topic": settings.topic_clicks, "partition": 0, "offset": 10**12}]})),
        (settings.topic_users_forget, b"u-elsewhere", orjson.dumps({"user_id": "u-elsewhere",
            "horizon": [{"topic": settings.topic_dlq, "partition": 0, "offset": 1}]})),
    ]  # fmt: skip
    produce_raw(settings, bad)

    worker = start_worker(settings, tmp_path)
    try:

        def forgets(outcome: str) -> float:
            return counter_total(worker.metrics_text(), "streamrec_forgets", outcome=outcome)

        wait_until(
            lambda: forgets("forgotten") + forgets("absent") + forgets("rejected") >= 6, 120,
            "six forget requests handled",
        )  # fmt: skip
        wait_until(lambda: counter_total(worker.metrics_text(), "streamrec_events") >= 3000, 60,
                   "every event handled")  # fmt: skip

        client = redis.Redis.from_url(settings.redis_url)
        left = [k for k in client.scan_iter("sr:u:*", count=1000) if is_user_key(k.decode(), gone)]
        assert left == []
        users = {k.decode()[6:].rsplit("}:", 1)[0] for k in client.scan_iter("sr:u:*:meta")}
        assert users == set(per_user) - {gone}

        on_disk = archived_user_ids(settings)
        assert gone not in on_disk
        assert sum(on_disk.values()) >= len(events) - per_user[gone]
        read_back = [a.event for a in read_archive(settings.archive_root)]
        assert sorted(e.event_id for e in read_back) == sorted(
            e.event_id for e in events if e.user_id != gone
        )
        assert read_forgotten(settings.archive_root).count == 2  # the retrain's horizon

        # The next bundle: a retraining cycle on this archive trains on everyone but
        # the user, and its manifest names the forgets it honoured.
        trained_on: list[str] = []

        def train_and_watch(sequences: Any, *args: Any, **kwargs: Any) -> Any:
            trained_on.extend(s.user_id for s in sequences)
            return real_train(sequences, *args, **kwargs)

        real_train = training.train_models
        monkeypatch.setattr(cycle, "train_models", train_and_watch)
        retrain = settings.model_copy(
            update={"registry": tmp_path / "registry", "retrain_min_events": 100}
        )
        result = cycle.run_cycle(retrain, TINY_PLAN)
        assert result.outcome == "published", result.reason
        assert set(trained_on) == set(per_user) - {gone}
        manifest = registry.read_manifest(retrain.registry, str(result.version))
        assert manifest.data_window["forgets_applied"] == 2
        assert (forgets("forgotten"), forgets("absent"), forgets("rejected")) == (1, 1, 4)

        # Downstream: a tombstone for the user on the feed's topic (compaction drops
        # the user's records), and the malformed requests in the DLQ with a reason.
        records = read_topic(settings, settings.topic_recommendations, expected=2)
        tombstones = {r.key for r in records if r.value is None}
        assert {gone.encode(), b"never-seen"} <= tombstones
        dlq = read_topic(settings, settings.topic_dlq, expected=4)
        assert sorted(r.headers["streamrec.reason"] for r in dlq) == [
            "bad_value", "bad_value", "bad_value", "malformed_json"
        ]  # fmt: skip
        assert {r.headers["streamrec.source.topic"] for r in dlq} == {settings.topic_users_forget}

        # What a worker holding no input partition of the user waits on: the group's
        # commits as the broker has them, which reach the request's horizon.
        wait_until(
            lambda: all(
                group_committed(settings).get((h.topic, h.partition), -1) >= h.offset
                for h in request.horizon
            ), 30, "the group's commits past the horizon",
        )  # fmt: skip

        # Idempotent: forgetting again finds nothing, and changes nothing else.
        send_forget(settings, gone)
        wait_until(lambda: forgets("absent") >= 2, 60, "the second forget")
        assert {k.decode()[6:].rsplit("}:", 1)[0] for k in client.scan_iter("sr:u:*:meta")} == users
        time.sleep(0.1)
    finally:
        worker.stop()
