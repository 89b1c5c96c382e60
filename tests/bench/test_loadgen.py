"""The C load generator `streamrec bench serve` uses: open loop (requests leave on
schedule however slow the answers, each timed from its due time) and every request
accounted for."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.serve import _generate_in_c, loadgen_binary


@contextmanager
def slow_server(delay_s: float) -> Iterator[tuple[str, list[bytes]]]:
    """Answers every POST after `delay_s`, keeping connections alive."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(delay_s)
            answer = b'{"items": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_requests_leave_on_schedule_however_slow_the_answers() -> None:
    binary = loadgen_binary()
    if binary is None:
        pytest.skip("no C compiler")
    # 0.2 s per answer at 50 requests/s: ten in flight at once, on ten connections.
    with slow_server(0.2) as (url, bodies):
        latencies, errors, sent, elapsed = _generate_in_c(binary, url, ["a", "b"], 50, 1.0)
    assert sent == 50 and not errors and len(latencies) == 50
    assert min(latencies) >= 0.2
    # A closed loop on one connection would take 50 × 0.2 s = 10 s.
    assert elapsed < 2.0
    assert sorted(bodies[:2]) == [b'{"user_id":"a","k":20}', b'{"user_id":"b","k":20}']


def test_a_server_that_never_answers_counts_as_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    binary = loadgen_binary()
    if binary is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr("bench.serve.REQUEST_TIMEOUT_S", 0.5)
    with slow_server(2.0) as (url, _):
        latencies, errors, sent, _ = _generate_in_c(binary, url, ["a"], 20, 0.5)
    assert sent == 10 and not latencies
    assert errors == {"timeout (> 0.5 s)": 10}
