"""The client's retry and failover policy against real sockets: scripted HTTP servers in
threads (answers chosen per request, hits counted) and ports nobody listens on."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devtools.devstack import free_port
from streamrec.client import AsyncRecommenderClient, RecommenderClient, RetryPolicy
from streamrec.errors import RequestRejected, ServersUnavailable

ANSWER = {"user_id": "u", "items": [{"item_id": "i1", "score": 1.0}], "model_version": "v1"}
FAST = RetryPolicy(attempts=3, backoff_s=0.001, backoff_max_s=0.002)


class Scripted:
    """An HTTP server answering each POST with the next status of its script (200 with a
    valid answer once the script runs out), optionally after a delay."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.delay_s = delay_s
        self.hits = 0
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                scripted.hits += 1
                status = scripted.statuses.pop(0) if scripted.statuses else 200
                time.sleep(scripted.delay_s)
                body = json.dumps(ANSWER if status == 200 else {"detail": f"scripted {status}"})
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def make(statuses: list[int] = [], delay_s: float = 0.0) -> Scripted:  # noqa: B006
        servers.append(Scripted(statuses, delay_s))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def recommend(
    mode: str, urls: list[str], policy: RetryPolicy, timeout_s: float = 5.0
) -> str | None:
    """One /recommend through the sync or the async client; the served version."""
    if mode == "sync":
        with RecommenderClient(urls, timeout_s=timeout_s, retry=policy) as client:
            return client.recommend("u", k=1).model_version

    async def ask() -> str | None:
        async with AsyncRecommenderClient(urls, timeout_s=timeout_s, retry=policy) as client:
            return (await client.recommend("u", k=1)).model_version

    return asyncio.run(ask())


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


@MODES
def test_retries_a_503_then_answers(mode: str, scripted: Callable[..., Scripted]) -> None:
    server = scripted([503, 502])
    assert recommend(mode, [server.url], FAST) == "v1"
    assert server.hits == 3


@MODES
def test_a_4xx_is_final(mode: str, scripted: Callable[..., Scripted]) -> None:
    server = scripted([422])
    with pytest.raises(RequestRejected) as rejected:
        recommend(mode, [server.url], FAST)
    assert rejected.value.status_code == 422 and rejected.value.detail == "scripted 422"
    assert server.hits == 1


@MODES
def test_gives_up_after_its_attempts(mode: str, scripted: Callable[..., Scripted]) -> None:
    server = scripted([504] * 10)
    with pytest.raises(RequestRejected) as rejected:
        recommend(mode, [server.url], FAST)
    assert rejected.value.status_code == 504
    assert server.hits == FAST.attempts


@MODES
def test_fails_over_from_a_dead_server(mode: str, scripted: Callable[..., Scripted]) -> None:
    server = scripted()
    # Each new client starts its turn at the first URL: the dead one.
    assert recommend(mode, [dead_url(), server.url], RetryPolicy(attempts=2)) == "v1"
    assert server.hits == 1


@MODES
def test_a_slow_server_times_out_and_the_next_answers(
    mode: str, scripted: Callable[..., Scripted]
) -> None:
    # Far apart, so a busy machine cannot blur them: the quick one answers in ms.
    slow, quick = scripted([200], delay_s=3.0), scripted()
    assert recommend(mode, [slow.url, quick.url], FAST, timeout_s=0.5) == "v1"
    assert (slow.hits, quick.hits) == (1, 1)


@MODES
def test_no_server_at_all(mode: str) -> None:
    with pytest.raises(ServersUnavailable, match="3 tries"):
        recommend(mode, [dead_url(), dead_url()], FAST)


def test_requests_take_turns_and_a_failed_server_goes_last(
    scripted: Callable[..., Scripted],
) -> None:
    first, second = scripted(), scripted()
    with RecommenderClient([first.url, second.url], retry=FAST) as client:
        for _ in range(4):
            client.recommend("u")
        assert (first.hits, second.hits) == (2, 2)
        first.statuses = [503]
        client.recommend("u")  # first's turn: 503, then second answers
        assert (first.hits, second.hits) == (3, 3)
        for _ in range(4):  # first is cooling down: second is asked first every time
            client.recommend("u")
        assert (first.hits, second.hits) == (3, 7)


def test_backoff_is_jittered_under_a_doubling_ceiling() -> None:
    policy = RetryPolicy(backoff_s=0.1, backoff_max_s=0.3)
    for failures, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3), (6, 0.3)):
        waits = [policy.wait_s(failures) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
