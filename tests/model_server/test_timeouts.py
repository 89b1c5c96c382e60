"""Every wait is bounded: a Redis that stops answering costs a request at most the
Redis timeout (then a 503, or trending from the last answer read), requests past
the concurrency cap are shed at once, and a client that sends its request too
slowly, or not at all, loses the connection."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bench.scenarios.redis_freeze import frozen_redis
from bench.scenarios.users import apply, events_for
from devtools.processes import ServiceProcess
from devtools.scrape import counter_total
from model_server.recommender import Recommender
from streamrec.catalogue import Catalogue
from streamrec.items import ItemRecord
from streamrec.loaded import open_model
from streamrec.metrics import ServeMetrics
from streamrec.state import StateStore
from tests.model_server.conftest import Served, in_process

pytestmark = pytest.mark.integration


async def test_with_redis_frozen_score_is_a_503_and_recommend_answers_from_trending(
    served: Served,
) -> None:
    settings = served.settings.model_copy(update={"serve_redis_timeout_ms": 200})
    popular = served.items[:3]
    clicks = [popular[0]] * 4 + [popular[1]] * 3 + [popular[2]] * 2
    await apply(settings, events_for("others", clicks))
    await apply(settings, events_for("alice", served.items[10:14]))
    async with in_process(settings) as (client, _):
        before = await client.post("/recommend", json={"user_id": "newcomer", "k": 3})
        assert before.json()["fallback"] == "trending"
        with frozen_redis(settings):
            started = time.perf_counter()
            scored = await client.post(
                "/score", json={"user_id": "alice", "item_ids": served.items[20:22]}
            )
            recommended = await client.post(
                "/recommend", json={"user_id": "alice", "k": 3, "exclude": [popular[1]]}
            )
            elapsed_s = time.perf_counter() - started
    assert scored.status_code == 503, scored.text
    assert scored.json()["error"] == "state_unavailable"
    assert scored.headers["retry-after"] == "1"
    assert recommended.status_code == 200, recommended.text
    body = recommended.json()
    assert body["fallback"] == "trending"
    items = [item["item_id"] for item in body["items"]]
    assert items[:2] == [popular[0], popular[2]] and len(items) == 3
    # Two Redis timeouts, not a wait for Redis to come back.
    assert elapsed_s < 2.0


async def test_with_redis_frozen_a_filtered_request_gets_trending_through_its_filter(
    served: Served,
) -> None:
    """The filter and the cap are checked against the process's copy of the
    catalogue: a Redis that does not answer costs the user their ranking, never
    the filter; a copy too old to check against is a 503."""
    settings = served.settings.model_copy(
        update={"serve_redis_timeout_ms": 200, "serve_catalogue_max_lag_s": 1.5}
    )
    shoes, hats = served.items[:6], served.items[6:12]
    catalogue = Catalogue(settings)
    try:
        await catalogue.apply_records_each(
            [ItemRecord(i, 1, categories=("shoes",)) for i in shoes]
            + [ItemRecord(i, 1, categories=("hats",)) for i in hats]
        )
    finally:
        await catalogue.close()
    # Hats trend above shoes; the user's own history is shoes.
    await apply(settings, events_for("others", [*hats, *hats, *shoes]))
    await apply(settings, events_for("alice", shoes[:2]))
    body = {"user_id": "alice", "k": 4, "filter": {"include_categories": ["shoes"]}}
    async with in_process(settings) as (client, _):
        with frozen_redis(settings, at_most_s=3.0):
            answered = await client.post("/recommend", json=body)
            await asyncio.sleep(1.6)  # the catalogue copy is now too old to check against
            refused = await client.post("/recommend", json=body)
    assert answered.status_code == 200, answered.text
    assert answered.json()["fallback"] == "trending"
    items = [item["item_id"] for item in answered.json()["items"]]
    assert len(items) == 4 and set(items) <= set(shoes)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "state_unavailable"


async def test_trending_is_held_from_start_up(served: Served) -> None:
    """A process that has answered nobody yet still has trending to answer with."""
    settings = served.settings.model_copy(update={"serve_redis_timeout_ms": 200})
    popular = served.items[5]
    await apply(settings, events_for("others", [popular, popular, served.items[6]]))
    async with in_process(settings) as (client, _):
        with frozen_redis(settings):
            response = await client.post("/recommend", json={"user_id": "someone", "k": 3})
    assert response.status_code == 200, response.text
    assert response.json()["fallback"] == "trending"
    assert [item["item_id"] for item in response.json()["items"]] == [popular, served.items[6]]


async def test_requests_past_the_concurrency_cap_are_shed_with_503(served: Served) -> None:
    settings = served.settings.model_copy(
        update={"serve_redis_timeout_ms": 1500, "serve_max_concurrency": 2}
    )
    async with in_process(settings) as (client, _):

        async def timed_score(n: int) -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            response = await client.post(
                "/score", json={"user_id": f"u{n}", "item_ids": served.items[:2]}
            )
            return response, time.perf_counter() - started

        with frozen_redis(settings):
            answers = await asyncio.gather(*(timed_score(n) for n in range(6)))
        metrics = (await client.get("/metrics")).text
        healthy = await client.get("/healthz")
    errors = sorted(response.json()["error"] for response, _ in answers)
    assert errors == ["overloaded"] * 4 + ["state_unavailable"] * 2
    for response, elapsed_s in answers:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        if response.json()["error"] == "overloaded":
            assert elapsed_s < 1.0  # shed at once, not after the Redis timeout
    assert counter_total(metrics, "streamrec_serve_requests", endpoint="score", status="5xx") == 6
    assert healthy.status_code == 200


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it did."""
    sock.settimeout(timeout_s)
    started = time.monotonic()
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


@pytest.fixture
def slow_client_server(served: Served, tmp_path: Path) -> Iterator[ServiceProcess]:
    settings = served.settings.model_copy(
        update={"serve_header_timeout_s": 0.5, "serve_body_timeout_s": 0.5}
    )
    with ServiceProcess(settings, ["serve"], tmp_path / "serve.log", settings.serve_port) as server:
        yield server


def connect(server: ServiceProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_a_connection_that_never_sends_is_closed(slow_client_server: ServiceProcess) -> None:
    with connect(slow_client_server) as sock:
        received, after_s = read_until_closed(sock, 10)
    assert received == b"" and after_s < 5


def test_headers_trickled_in_are_cut_off_after_the_header_timeout(
    slow_client_server: ServiceProcess,
) -> None:
    with connect(slow_client_server) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nhost: x\r\n")
        started = time.monotonic()
        closed = False
        for _ in range(50):  # a header byte every 0.1 s for up to 5 s
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
        if not closed:
            read_until_closed(sock, 1)
        elapsed_s = time.monotonic() - started
    assert elapsed_s < 4


def test_a_body_that_stops_arriving_is_a_408(slow_client_server: ServiceProcess) -> None:
    with connect(slow_client_server) as sock:
        sock.sendall(
            b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n"
            b'{"user_id": '
        )
        received, after_s = read_until_closed(sock, 10)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b'"error":"body_timeout"' in received
    assert after_s < 5


async def test_readyz_says_why_in_a_reason_code(served: Served) -> None:
    """/readyz is for probes and needs no token: no addresses, no raw error text."""
    async with in_process(served.settings) as (client, _):
        with frozen_redis(served.settings):
            frozen = await client.get("/readyz")
    assert frozen.status_code == 503
    assert frozen.json() == {"ready": False, "reason": "redis_unavailable"}


async def test_without_a_timeout_the_feeds_recommender_waits_for_redis(
    served: Served,
) -> None:
    """The recommendations feed has no one waiting: a frozen Redis delays its answer,
    it does not turn a user's top-K into trending."""
    settings = served.settings.model_copy(update={"serve_budget_ms": 60_000})
    await apply(settings, events_for("patient", served.items[:5]))
    store = StateStore(settings)
    recommender = Recommender(settings, store, ServeMetrics(CollectorRegistry()))
    model = open_model(served.root, served.first.version)
    try:
        with frozen_redis(settings, at_most_s=0.5):
            answer = await recommender.recommend(model, "patient", 5)
    finally:
        await store.close()
    assert answer.fallback is None and answer.has_state and len(answer.items) == 5
