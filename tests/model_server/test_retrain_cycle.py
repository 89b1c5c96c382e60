"""A full learning-loop cycle under load: events flow in through Kafka and the
worker into the archive, requests flow to a model server, `run_cycle` trains,
gates and publishes, the server swaps, and no request fails."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.scenarios.data import yoochoose_sessions
from bench.scenarios.models import TINY_PLAN
from bench.scenarios.workers import produce_raw
from devtools.processes import ServiceProcess
from retrain.cycle import run_cycle
from streamrec import registry
from streamrec.archive import read_archive
from streamrec.client import RecommenderClient
from streamrec.events import Event, EventType
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.model_server.conftest import Served

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def running(served: Served, tmp_path: Path) -> Iterator[Settings]:
    settings = served.settings.model_copy(
        update={
            "archive_dir": tmp_path / "archive",
            "retrain_min_events": 200,
            "retrain_tolerance": 100.0,  # this test is about the swap, not the gate
        }
    )
    ensure_topics(settings)
    worker = ServiceProcess(settings, ["worker"], tmp_path / "worker.log", settings.worker_web_port)
    server = ServiceProcess(settings, ["serve"], tmp_path / "serve.log", settings.serve_port)
    try:
        worker.start()
        server.start()
        worker.wait_ready()
        server.wait_ready()
        yield settings
    finally:
        server.stop()
        worker.stop()


def test_a_cycle_under_load_publishes_swaps_and_drops_no_request(
    running: Settings, served: Served
) -> None:
    settings = running
    sessions = yoochoose_sessions(400, skip=3000)
    now_ms = int(time.time() * 1000)
    messages = []
    for number, session in enumerate(sessions):
        for step, item_id in enumerate(session.item_ids):
            event = Event(f"{session.user_id}-{step}", session.user_id, item_id, EventType.CLICK,
                          now_ms + number * 10 + step)  # fmt: skip
            messages.append((settings.topic_clicks, event.user_id.encode(), event.to_json()))
    produce_raw(settings, messages)
    deadline = time.monotonic() + 60
    while sum(1 for _ in read_archive(settings.archive_root)) < len(messages):
        assert time.monotonic() < deadline, "the worker did not archive the events"
        time.sleep(0.5)

    versions: Counter[str | None] = Counter()
    failures: list[str] = []
    stop = threading.Event()
    users = [s.user_id for s in sessions]

    def load() -> None:
        with RecommenderClient(f"http://127.0.0.1:{settings.serve_port}") as client:
            rng = random.Random(1)
            while not stop.is_set():
                try:
                    versions[client.recommend(rng.choice(users), k=10).model_version] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    loader = threading.Thread(target=load)
    loader.start()
    try:
        result = run_cycle(settings, TINY_PLAN)
        assert result.outcome == "published", result.reason
        assert registry.current_version(settings.registry) == result.version
        deadline = time.monotonic() + 30
        while versions[str(result.version)] < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        loader.join()
    assert failures == []
    assert versions[served.first.version] > 0 and versions[str(result.version)] >= 20
