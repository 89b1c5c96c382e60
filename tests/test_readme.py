"""The README's "By hand" block, run as written, command by command, on a dev stack
of its own (in a fresh home and registry, on free ports), so that the README cannot
rot: every command exits 0, the services come up, and the curl line gets
recommendations for the sampled user."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devtools.devstack import free_port
from devtools.scrape import counter_total

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = Path(__file__).resolve().parents[1] / "README.md"
LONG_RUNNING = {"worker", "serve", "feed"}


def by_hand_block() -> list[str]:
    text = README.read_text()
    section = text[text.index("## By hand") :]
    opening = section.index("```sh") + len("```sh")
    block = section[opening : section.index("```", opening)]
    lines = []
    for line in block.strip().splitlines():
        # A comment starts at "  #" (two spaces): JSON bodies hold no such thing.
        command = re.split(r"\s{2,}#", line)[0].strip()
        if command:
            lines.append(command)
    return lines


def _ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args!r} exited: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready within {timeout_s} s: {log.read_text()[-2000:]}")


def test_the_readme_by_hand_block_runs_as_written(tmp_path: Path) -> None:
    commands = by_hand_block()
    assert commands[0] == "streamrec dev up" and commands[-1] == "streamrec dev down"
    ports = {"serve": free_port(), "worker": free_port(), "feed": free_port()}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")},
        "STREAMREC_HOME": str(tmp_path / "home"),
        "STREAMREC_REGISTRY": str(tmp_path / "registry"),
        "STREAMREC_SERVE_PORT": str(ports["serve"]),
        "STREAMREC_WORKER_WEB_PORT": str(ports["worker"]),
        "STREAMREC_FEED_WEB_PORT": str(ports["feed"]),
        # Waits only, as the tests' own settings (tests/conftest.py): a group join in
        # 2 s rather than 5, and a worker whose broker is gone (`dev down` ran first)
        # out 5 s after SIGTERM rather than 30.
        "STREAMREC_CONSUMER_SESSION_TIMEOUT_S": "4",
        "STREAMREC_CONSUMER_HEARTBEAT_S": "0.5",
        "STREAMREC_WORKER_SHUTDOWN_TIMEOUT_S": "5",
        # What `make venv` puts first on a user's PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    services: dict[str, subprocess.Popen[bytes]] = {}
    ran: list[str] = []
    try:
        for command in commands:
            words = shlex.split(command)
            if words[0] == "curl":
                command = command.replace("localhost:8000", f"127.0.0.1:{ports['serve']}")
            if words[0] == "streamrec" and words[1] in LONG_RUNNING:
                log = tmp_path / f"{words[1]}.log"
                with log.open("wb") as out:
                    # A session of its own: stopping it stops the shell's child too.
                    services[words[1]] = subprocess.Popen(
                        command, shell=True, cwd=tmp_path, env=env, stdout=out, stderr=out,
                        start_new_session=True,
                    )  # fmt: skip
                path = "/readyz" if words[1] == "serve" else "/metrics"
                _ready(f"http://127.0.0.1:{ports[words[1]]}{path}", services[words[1]], log)
                ran.append(command)
                continue
            if words[0] == "curl":
                _wait_for_the_sample(ports["worker"])
            done = subprocess.run(
                command, shell=True, cwd=tmp_path, env=env, capture_output=True, timeout=600
            )
            output = done.stdout.decode() + done.stderr.decode()
            assert done.returncode == 0, f"{command}\n{output[-3000:]}"
            ran.append(command)
            if words[0] == "curl":
                answer = json.loads(done.stdout)
                assert len(answer["items"]) == 5 and answer["user_id"] == "u021", answer
            if words[:2] == ["streamrec", "state"]:
                assert json.loads(done.stdout)["recent_events"], output
            if words[:2] == ["streamrec", "retrain"]:
                outcome = json.loads(done.stdout.decode().strip().splitlines()[-1])
                assert outcome["outcome"] in ("published", "kept"), outcome
    finally:
        _stop_groups(list(services.values()))
        if "streamrec dev down" not in ran:
            subprocess.run(["streamrec", "dev", "down"], env=env, cwd=tmp_path, timeout=60)
    assert ran == [c.replace("localhost:8000", f"127.0.0.1:{ports['serve']}") for c in commands]


def _stop_groups(processes: list[subprocess.Popen[bytes]], timeout_s: float = 20) -> None:
    """SIGTERM to each command's whole process group (the shell and the service it
    started), all at once, then SIGKILL to whatever is left after `timeout_s`: a
    worker whose broker is already down (`dev down` ran) may never finish its shutdown."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        while time.monotonic() < deadline:
            process.poll()  # reaps the shell, whose zombie would keep the group alive
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_for_the_sample(worker_port: int, timeout_s: float = 120) -> None:
    """The produced sample applied by the worker (the README's reader waits a moment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/metrics") as response:
            if counter_total(response.read().decode(), "streamrec_events") >= 4000:
                return
        time.sleep(0.5)
    raise AssertionError("the worker did not apply the sample's 4,000 events")
