"""End to end: events in through Kafka, each changed user's fresh top-K out on the
recommendations topic (worker → state.changes → feed), rate-limited per user; the
feed's old command name still runs it."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from bench.scenarios.models import publish
from bench.scenarios.workers import read_topic
from devtools.devstack import free_port
from devtools.processes import ServiceProcess
from streamrec import experiments
from streamrec.experiments import CURRENT_ARM, Arm, new_experiment
from streamrec.forget import send_forget
from streamrec.keys import is_user_key
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.model_server.conftest import Served
from tests.model_server.test_end_to_end import send

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@contextmanager
def running_feed(
    served: Served, tmp_path: Path, feed_min_interval_ms: int, **update: Any
) -> Iterator[Settings]:
    """A worker and a feed on the served registry (or as `update` says), ready;
    their settings."""
    settings = served.settings.model_copy(
        update={
            "feed_web_port": free_port(),
            "feed_min_interval_ms": feed_min_interval_ms,
            **update,
        }
    )
    ensure_topics(settings)
    worker = ServiceProcess(settings, ["worker"], tmp_path / "worker.log", settings.worker_web_port)
    feed = ServiceProcess(settings, ["feed"], tmp_path / "feed.log", settings.feed_web_port)
    try:
        worker.start()
        feed.start()
        worker.wait_ready()
        feed.wait_ready()
        yield settings
    finally:
        feed.stop()
        worker.stop()


@pytest.fixture
def pipeline(served: Served, tmp_path: Path) -> Iterator[Settings]:
    with running_feed(served, tmp_path, feed_min_interval_ms=0) as settings:
        yield settings


def feed_records_for(
    settings: Settings, user_id: str, wanted: int, timeout_s: float = 40.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = read_topic(settings, settings.topic_recommendations, expected=10**9, timeout_s=1)
        found = [orjson.loads(r.value) for r in records if r.key == user_id.encode()]
        if len(found) >= wanted:
            return found
    raise AssertionError(f"{len(found)} of {wanted} records for {user_id} within {timeout_s} s")


def test_a_users_new_events_send_their_fresh_top_k(pipeline: Settings, served: Served) -> None:
    send(pipeline, "pia", [(item, "click") for item in served.items[:6]])
    (first, *_) = feed_records_for(pipeline, "pia", wanted=1)
    assert first["model_version"] == served.first.version
    assert first["fallback"] is None
    assert len(first["items"]) == pipeline.feed_k
    bought = first["items"][0]["item_id"]

    send(pipeline, "pia", [(bought, "purchase")])
    records = feed_records_for(pipeline, "pia", wanted=2)
    latest = records[-1]
    assert bought not in [item["item_id"] for item in latest["items"]]
    assert latest["ts"] >= first["ts"]


def feed_readyz(settings: Settings) -> dict[str, Any]:
    url = f"http://127.0.0.1:{settings.feed_web_port}/readyz"
    with urllib.request.urlopen(url, timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def test_without_a_model_the_feed_sends_trending_until_the_first_version(
    served: Served, tmp_path: Path
) -> None:
    """A fresh deployment (issue 18): the feed starts, its records are what
    /recommend answers then (trending, model_version null), and it swaps in the
    first version as the server does."""
    empty = tmp_path / "empty-registry"
    items = served.items[:4]
    with running_feed(
        served, tmp_path, feed_min_interval_ms=0, registry=empty, serve_wait_for_model=True
    ) as settings:
        waiting = feed_readyz(settings)
        send(settings, "noa", [(item, "click") for item in items])
        (first, *_) = feed_records_for(settings, "noa", wanted=1)
        version = publish(served.models, empty).version
        deadline = time.monotonic() + 20
        while feed_readyz(settings)["model_version"] != version:
            assert time.monotonic() < deadline, "the feed did not swap the first version in"
            time.sleep(0.1)
        send(settings, "noa", [(served.items[5], "click")])
        records = feed_records_for(settings, "noa", wanted=2)
    assert waiting == {"ready": True, "model_version": None, "serving": "trending"}
    assert first["model_version"] is None and first["fallback"] == "trending"
    assert set(i["item_id"] for i in first["items"]) <= set(items) and first["items"]
    assert records[-1]["model_version"] == version and records[-1]["fallback"] is None


def test_the_old_command_name_runs_the_feed_and_says_its_new_name(
    served: Served, tmp_path: Path
) -> None:
    settings = served.settings.model_copy(update={"feed_web_port": free_port()})
    log = tmp_path / "publish.log"
    with ServiceProcess(settings, ["publish"], log, settings.feed_web_port) as feed:
        assert "streamrec_feed_records_total" in feed.metrics_text()
    assert "`streamrec publish` is now `streamrec feed`" in log.read_text()


def test_a_forgotten_users_last_record_is_a_tombstone_and_no_key_of_theirs_is_left(
    pipeline: Settings, served: Served
) -> None:
    """The worker's tombstone and the feed's own (after any record it sent from the
    user's earlier notices): a compacted topic keeps nothing of the user."""
    send(pipeline, "fay", [(item, "click") for item in served.items[:4]])
    feed_records_for(pipeline, "fay", wanted=1)
    send_forget(pipeline, "fay")
    deadline = time.monotonic() + 40
    mine: list[bytes | None] = []
    while time.monotonic() < deadline:
        records = read_topic(pipeline, pipeline.topic_recommendations, expected=10**9, timeout_s=1)
        mine = [r.value for r in records if r.key == b"fay"]
        if sum(value is None for value in mine) >= 2:
            break
    assert sum(value is None for value in mine) == 2 and mine[-1] is None, mine
    client = redis.Redis.from_url(pipeline.redis_url)
    assert [k for k in client.scan_iter("sr:u:*") if is_user_key(k.decode(), "fay")] == []


def test_records_come_from_the_users_experiment_arm(served: Served, tmp_path: Path) -> None:
    """The feed assigns users as the server does: each record from the user's arm's
    version, naming the arm."""
    second = publish(served.models, served.root, served.first.version, make_current=False)
    arms = [Arm("control", CURRENT_ARM, 1), Arm("candidate", second.version, 1)]
    experiment = experiments.start(served.root, new_experiment("feed-ab", arms))
    users = [f"feed-user-{n}" for n in range(6)]
    versions = {"control": served.first.version, "candidate": second.version}
    assert {experiment.arm_of(user).name for user in users} == {"control", "candidate"}
    with running_feed(served, tmp_path, feed_min_interval_ms=0) as settings:
        for user in users:
            send(settings, user, [(item, "click") for item in served.items[:3]])
        for user in users:
            (record, *_) = feed_records_for(settings, user, wanted=1)
            arm = experiment.arm_of(user).name
            assert (record["arm"], record["model_version"]) == (arm, versions[arm]), user
