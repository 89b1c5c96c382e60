"""deploy/docker/retrain_and_push.py judges a cycle as the worker's trigger does and
keeps the retrain counters in a Pushgateway, one higher each cycle."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devtools.devstack import free_port
from tests.deploy.pusher import PUSHER, load_pusher
from tests.deploy.test_observability import RULES, query_until


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


needs_pushgateway = pytest.mark.skipif(
    shutil.which("prometheus-pushgateway") is None,
    reason="prometheus-pushgateway not installed (make binaries)",
)


@contextmanager
def real_pushgateway(workdir: Path) -> Iterator[str]:
    """Debian's Pushgateway on a free port; its address."""
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        # Debian's build persists to /var/lib/prometheus by default: a file of our own.
        ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
         f"--persistence.file={workdir / 'pushgateway.data'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as process:  # fmt: skip
        try:
            wait_for(f"{gateway}/-/ready")
            yield gateway
        finally:
            process.terminate()


@needs_pushgateway
def test_a_real_pushgateway_keeps_the_counters_across_cycles(tmp_path: Path) -> None:
    """What it writes back (its label order, `le="1"`, its own push_time_seconds) is
    read as the wrapper expects."""
    pusher = load_pusher()
    with real_pushgateway(tmp_path) as gateway:
        pusher.push(gateway, "published", 2.0)
        pusher.push(gateway, "rejected", 0.5)
        pusher.push(gateway, "rejected", 30.0)
        with urllib.request.urlopen(f"{gateway}/metrics", timeout=5) as response:
            text = response.read().decode()
    samples = {
        (s.name, s.labels.get("outcome") or s.labels.get("le") or ""): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("job") == "streamrec-retrain"
    }
    assert samples[("streamrec_retrain_total", "published")] == 1
    assert samples[("streamrec_retrain_total", "rejected")] == 2
    assert samples[("streamrec_retrain_seconds_bucket", "1")] == 1  # the Go format
    assert samples[("streamrec_retrain_seconds_bucket", "5")] == 2
    assert samples[("streamrec_retrain_seconds_count", "")] == 3


@needs_pushgateway
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")
def test_a_failed_cycle_fires_the_alert_through_a_real_pushgateway(tmp_path: Path) -> None:
    """The path compose and Kubernetes use: cycle -> Pushgateway -> Prometheus (with
    honor_labels, our rules) -> StreamrecRetrainFailing."""
    pusher = load_pusher()
    with real_pushgateway(tmp_path) as gateway:
        pusher.push(gateway, "published", 2.0)  # every outcome's series, at 0 for failed
        target = gateway.removeprefix("http://")
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {"job_name": "pushgateway", "honor_labels": True,
                         "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )  # fmt: skip
        with subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ) as prometheus:  # fmt: skip
            try:
                failed = 'streamrec_retrain_total{job="streamrec-retrain",outcome="failed"}'
                assert query_until(port, f"count({failed})", 1) == 1
                pusher.push(gateway, "failed", 3.0)
                firing = 'ALERTS{alertname="StreamrecRetrainFailing",alertstate="firing"}'
                assert query_until(port, f"count({firing})", 1) == 1
            finally:
                prometheus.terminate()


def wait_for(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
