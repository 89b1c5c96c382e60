"""deploy/docker/retrain_and_push.py judges a cycle as the worker's trigger does and
keeps the retrain counters in a Pushgateway, one higher each cycle."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

PUSHER = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "retrain_and_push.py"


def load_pusher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("retrain_and_push", PUSHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakePushgateway(BaseHTTPRequestHandler):
    """PUT /metrics/job/J stores the body as group J; GET /metrics shows every group
    with its job label added and bounds as the Go text format writes them (le="1")."""

    groups: ClassVar[dict[str, str]] = {}

    def do_PUT(self) -> None:
        job = self.path.removeprefix("/metrics/job/")
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).groups[job] = body
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        lines = []
        for job, body in type(self).groups.items():
            for line in body.splitlines():
                if line.startswith("#"):
                    lines.append(line)
                    continue
                name, value = line.rsplit(" ", 1)
                name = name.replace('le="1.0"', 'le="1"')
                labels = f'job="{job}",instance=""'
                name = (
                    name.replace("{", "{" + labels + ",") if "{" in name else f"{name}{{{labels}}}"
                )
                lines.append(f"{name} {value}")
        exposition = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(exposition)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def pushgateway() -> Iterator[str]:
    FakePushgateway.groups = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePushgateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def cycle(result: object, exit_code: int = 0) -> list[str]:
    """A stand-in for `streamrec retrain`: prints a log line, then `result`, and exits."""
    line = result if isinstance(result, str) else orjson.dumps(result).decode()
    code = f"print('training...'); print({line!r}); raise SystemExit({exit_code})"
    return [sys.executable, "-c", code]


def pushed(gateway_groups: dict[str, str]) -> dict[str, float]:
    text = gateway_groups["streamrec-retrain"]
    return {
        s.name + "".join(f"{k}={v}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_counters_grow_by_one_outcome_each_cycle(pushgateway: str) -> None:
    pusher = load_pusher()
    published = {"outcome": "published", "reason": "not worse"}
    assert pusher.main(["--pushgateway", pushgateway, "--", *cycle(published)]) == 0
    assert pusher.main(["--pushgateway", pushgateway, "--", *cycle(published)]) == 0
    assert pusher.main(["--pushgateway", pushgateway, "--", *cycle({"outcome": "rejected"})]) == 0
    assert pusher.main(["--pushgateway", pushgateway, "--", *cycle("oops", exit_code=3)]) == 3
    samples = pushed(FakePushgateway.groups)
    assert samples["streamrec_retrain_totaloutcome=published"] == 2
    assert samples["streamrec_retrain_totaloutcome=rejected"] == 1
    assert samples["streamrec_retrain_totaloutcome=skipped"] == 0
    assert samples["streamrec_retrain_totaloutcome=failed"] == 1
    assert samples["streamrec_retrain_seconds_count"] == 4
    assert samples["streamrec_retrain_seconds_bucketle=+Inf"] == 4


def test_the_histogram_adds_up_across_pushes(pushgateway: str) -> None:
    """The fake writes the 1 s bound back as "1", as the Pushgateway does."""
    pusher = load_pusher()
    pusher.push(pushgateway, "published", 2.0)
    pusher.push(pushgateway, "rejected", 0.5)
    samples = pushed(FakePushgateway.groups)
    assert samples["streamrec_retrain_seconds_bucketle=1.0"] == 1
    assert samples["streamrec_retrain_seconds_bucketle=5.0"] == 2
    assert samples["streamrec_retrain_seconds_sum"] == 2.5
    assert samples["streamrec_retrain_seconds_count"] == 2


def test_an_unreadable_last_line_is_a_failed_cycle(pushgateway: str) -> None:
    pusher = load_pusher()
    assert pusher.main(["--pushgateway", pushgateway, "--", *cycle("not json")]) == 1
    assert pushed(FakePushgateway.groups)["streamrec_retrain_totaloutcome=failed"] == 1


def test_an_unreachable_pushgateway_leaves_the_cycle_s_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pusher = load_pusher()
    published = {"outcome": "published", "reason": "not worse"}
    assert pusher.main(["--pushgateway", "http://127.0.0.1:9", "--", *cycle(published)]) == 0
    assert "not pushed" in capsys.readouterr().err


def test_a_stopped_cycle_is_counted_as_failed(pushgateway: str) -> None:
    """SIGTERM to the wrapper (a Job's deadline) reaches the cycle, whose end is pushed."""
    ready = "import sys, time; print('started', flush=True); time.sleep(60)"
    command = [sys.executable, str(PUSHER), "--pushgateway", pushgateway, "--"]
    with subprocess.Popen(
        [*command, sys.executable, "-c", ready], stdout=subprocess.PIPE
    ) as wrapper:
        assert wrapper.stdout is not None
        assert wrapper.stdout.readline() == b"started\n"
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=30) == 128 + signal.SIGTERM
    assert pushed(FakePushgateway.groups)["streamrec_retrain_totaloutcome=failed"] == 1
