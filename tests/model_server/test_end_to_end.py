"""End to end: events in through Kafka and the Faust worker, answers out of the
model server over HTTP, both in their own processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from streamrec.client import Recommendations, RecommenderClient
from streamrec.processes import ServiceProcess
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.model_server.conftest import Served
from tests.pipeline import produce_raw

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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


def test_events_through_kafka_change_the_next_answer(
    served: Served, worker: ServiceProcess, server_process: ServiceProcess
) -> None:
    url = f"http://127.0.0.1:{served.settings.serve_port}"
    with RecommenderClient(url) as client:
        assert client.recommend("zoe", k=10).fallback == "trending"
        send(served.settings, "zoe", [(item, "click") for item in served.items[:6]])
        before = poll(client, "zoe", lambda a: a.fallback is None)
        bought = before[0]
        send(served.settings, "zoe", [(bought, "purchase")])
        after = poll(client, "zoe", lambda a: bought not in a.item_ids)
    assert len(after) == 10
