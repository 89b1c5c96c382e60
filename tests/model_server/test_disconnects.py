"""A client that hangs up before its body arrived is its own doing: a quiet 499,
counted as 4xx (the server-errors alert counts 5xx), never a 500 with a traceback."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest
from starlette.types import Message

from devtools.processes import ServiceProcess
from devtools.scrape import counter_total
from tests.model_server.conftest import Served, in_process

pytestmark = pytest.mark.integration

PARTIAL = b'{"user_id": "u1", "k"'


async def test_a_body_cut_off_by_the_client_is_a_499_counted_as_4xx(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    async with in_process(served.settings) as (client, app):
        incoming: list[Message] = [
            {"type": "http.request", "body": PARTIAL, "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/recommend",
            "raw_path": b"/recommend",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        with caplog.at_level(logging.INFO):
            await app(scope, receive, send)
        metrics = (await client.get("/metrics")).text
    assert sent[0]["status"] == 499
    answered = {
        status: counter_total(
            metrics, "streamrec_serve_requests", endpoint="recommend", status=status
        )
        for status in ("4xx", "5xx")
    }
    assert answered == {"4xx": 1, "5xx": 0}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_client_gone_mid_body_leaves_no_5xx_and_no_traceback(
    served: Served, tmp_path: Path
) -> None:
    settings = served.settings
    log_path = tmp_path / "serve.log"
    with ServiceProcess(settings, ["serve"], log_path, settings.serve_port) as server:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", settings.serve_port), timeout=5) as sock:
                sock.sendall(
                    b"POST /score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: 100\r\n\r\n" + PARTIAL
                )
                time.sleep(0.2)  # the app is waiting for the rest
        time.sleep(0.5)
        metrics = server.metrics_text()
    log = log_path.read_text()
    assert counter_total(metrics, "streamrec_serve_requests", endpoint="score", status="5xx") == 0
    assert counter_total(metrics, "streamrec_serve_requests", endpoint="score", status="4xx") == 3
    assert "Traceback" not in log and "ERROR" not in log, log
