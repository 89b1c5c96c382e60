"""End to end: events in through Kafka, each changed user's fresh top-K out on the
recommendations topic (worker → state.changes → publisher), rate-limited per user."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from bench.scenarios.pipeline import read_topic
from devtools.devstack import free_port
from devtools.processes import ServiceProcess
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.model_server.conftest import Served
from tests.model_server.test_end_to_end import send

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@contextmanager
def running_feed(
    served: Served, tmp_path: Path, publish_min_interval_ms: int
) -> Iterator[Settings]:
    """A worker and a publisher on the served registry, ready; their settings."""
    settings = served.settings.model_copy(
        update={
            "publisher_web_port": free_port(),
            "publish_min_interval_ms": publish_min_interval_ms,
        }
    )
    ensure_topics(settings)
    worker = ServiceProcess(settings, ["worker"], tmp_path / "worker.log", settings.worker_web_port)
    publisher = ServiceProcess(
        settings, ["publish"], tmp_path / "publisher.log", settings.publisher_web_port
    )
    try:
        worker.start()
        publisher.start()
        worker.wait_ready()
        publisher.wait_ready()
        yield settings
    finally:
        publisher.stop()
        worker.stop()


@pytest.fixture
def pipeline(served: Served, tmp_path: Path) -> Iterator[Settings]:
    with running_feed(served, tmp_path, publish_min_interval_ms=0) as settings:
        yield settings


def published_for(
    settings: Settings, user_id: str, wanted: int, timeout_s: float = 40.0
) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    found: list[dict] = []
    while time.monotonic() < deadline:
        records = read_topic(settings, settings.topic_recommendations, expected=10**9, timeout_s=1)
        found = [orjson.loads(r.value) for r in records if r.key == user_id.encode()]
        if len(found) >= wanted:
            return found
    raise AssertionError(f"{len(found)} of {wanted} records for {user_id} within {timeout_s} s")


def test_a_users_new_events_publish_their_fresh_top_k(pipeline: Settings, served: Served) -> None:
    send(pipeline, "pia", [(item, "click") for item in served.items[:6]])
    (first, *_) = published_for(pipeline, "pia", wanted=1)
    assert first["model_version"] == served.first.version
    assert first["fallback"] is None
    assert len(first["items"]) == pipeline.publish_k
    bought = first["items"][0]["item_id"]

    send(pipeline, "pia", [(bought, "purchase")])
    records = published_for(pipeline, "pia", wanted=2)
    latest = records[-1]
    assert bought not in [item["item_id"] for item in latest["items"]]
    assert latest["ts"] >= first["ts"]
