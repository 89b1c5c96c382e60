"""End to end: events in through Kafka and the Faust worker, answers out of the
model server over HTTP, both in their own processes; the worker caches each
changed user's vector, and the server answers from it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench.scenarios.workers import produce_raw
from devtools.processes import ServiceProcess
from devtools.scrape import counter_total
from streamrec.client import Recommendations, RecommenderClient
from streamrec.loaded import open_model
from streamrec.settings import Settings
from streamrec.state import StateStore, StoredUser
from streamrec.topics import ensure_topics
from streamrec.user_vectors import user_encoder_inputs
from tests.conftest import on_cluster
from tests.model_server.conftest import Served
from tests.model_server.test_endpoints import encodes

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=["standalone", "cluster"])
def served(request: pytest.FixtureRequest, served: Served) -> Served:
    """The worker and the server on a single Redis, then both on a Redis Cluster."""
    if request.param == "standalone":
        return served
    cluster = request.getfixturevalue("redis_cluster")
    return dataclasses.replace(served, settings=on_cluster(served.settings, cluster))


@pytest.fixture
def worker(served: Served, tmp_path: Path) -> Iterator[ServiceProcess]:
    settings = served.settings
    ensure_topics(settings)
    log = tmp_path / "worker.log"
    with ServiceProcess(settings, ["worker"], log, settings.worker_web_port) as process:
        yield process


def send(settings: Settings, user_id: str, events: list[tuple[str, str]]) -> None:
    now_ms = int(time.time() * 1000)
    messages = []
    for n, (item_id, event_type) in enumerate(events):
        body = {
            "event_id": f"{user_id}-{now_ms}-{n}",
            "user_id": user_id,
            "item_id": item_id,
            "type": event_type,
            "ts": now_ms + n,
        }
        topic = settings.topic_purchases if event_type == "purchase" else settings.topic_clicks
        messages.append((topic, user_id.encode(), orjson.dumps(body)))
    produce_raw(settings, messages)


def poll(
    client: RecommenderClient,
    user_id: str,
    done: Callable[[Recommendations], bool],
    timeout_s: float = 30.0,
) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = client.recommend(user_id, k=10)
        if done(answer):
            return answer.item_ids
        time.sleep(0.05)
    raise AssertionError(f"{user_id}: the answer did not change within {timeout_s} s")


def read_user(settings: Settings, user_id: str) -> StoredUser:
    async def read() -> StoredUser:
        store = StateStore(settings)
        try:
            return await store.read_user(user_id)
        finally:
            await store.close()

    return asyncio.run(read())


def wait_for_fresh_vector(
    settings: Settings, user_id: str, events: int, timeout_s: float = 30.0
) -> StoredUser:
    """The user's state once all `events` are applied and `vec` was made from it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        user = read_user(settings, user_id)
        cached = user.cached_vector
        all_applied = sum(user.counts_by_type.values()) == events
        if all_applied and cached is not None and cached.state_tag == user.state_tag:
            return user
        time.sleep(0.05)
    raise AssertionError(f"{user_id}: no vector for the state after {events} events")


def test_events_through_kafka_change_the_next_answer(
    served: Served, worker: ServiceProcess, server_process: ServiceProcess
) -> None:
    version = served.first.version
    deadline = time.monotonic() + 30
    while (
        counter_total(worker.metrics_text(), "streamrec_worker_model_swaps", outcome="swapped") < 1
    ):
        assert time.monotonic() < deadline, "the worker did not load the model"
        time.sleep(0.1)

    # The worker refreshes the vector of every user a batch changed: the vector the
    # server would compute, tagged with the version and the state it came from.
    send(served.settings, "vic", [(item, "click") for item in served.items[:5]])
    vic = wait_for_fresh_vector(served.settings, "vic", events=5)
    assert vic.cached_vector is not None and vic.cached_vector.model_version == version
    model = open_model(served.root, version)
    inputs = user_encoder_inputs(model, vic.recent_events)
    assert inputs is not None
    stored = np.frombuffer(vic.cached_vector.values, dtype=np.float32)
    assert np.allclose(stored, model.bundle.user_vectors(*inputs)[0], atol=1e-5)

    url = f"http://127.0.0.1:{served.settings.serve_port}"
    with RecommenderClient(url) as client:
        encoded_before = encodes(server_process.metrics_text())
        answer = client.recommend("vic", k=10)
        assert answer.fallback is None and answer.model_version == version
        assert encodes(server_process.metrics_text()) == encoded_before  # a cache hit

        assert client.recommend("zoe", k=10).fallback == "trending"
        send(served.settings, "zoe", [(item, "click") for item in served.items[:6]])
        before = poll(client, "zoe", lambda a: a.fallback is None)
        bought = before[0]
        send(served.settings, "zoe", [(bought, "purchase")])
        after = poll(client, "zoe", lambda a: bought not in a.item_ids)
    assert len(after) == 10
