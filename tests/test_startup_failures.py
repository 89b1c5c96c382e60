"""What a service says when what it needs is missing at start: one line naming the
fix, exit code 1, within seconds; never a traceback (issue 16)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devstack import free_port
from streamrec.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _run(args: list[str], tmp_path: Path, **env: str) -> tuple[int, str, float]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**base, "STREAMREC_HOME": str(tmp_path / "home"), **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


@pytest.mark.parametrize(
    ("command", "setting", "expected"),
    [
        (["serve"], {"STREAMREC_REDIS_URL": "redis://127.0.0.1:1/0"}, "does not answer"),
        (["serve"], {"STREAMREC_REDIS_URL": "http://127.0.0.1:6379"}, "is not a Redis URL"),
        (["worker"], {"STREAMREC_REDIS_URL": "redis://127.0.0.1:1/0"}, "streamrec dev up"),
        (["feed"], {"STREAMREC_REDIS_URL": "redis://127.0.0.1:1/0"}, "does not answer"),
    ],
    ids=["serve-redis-down", "serve-bad-url", "worker-redis-down", "feed-redis-down"],
)
def test_redis_missing_is_one_line(
    tmp_path: Path, command: list[str], setting: dict[str, str], expected: str
) -> None:
    code, output, _ = _run(command, tmp_path, **setting)
    assert code == 1 and expected in output, output
    assert output.count("\n") == 1 and output.startswith("error: "), output


def test_no_model_busy_port_and_unreachable_kafka_are_one_line(
    dev_stack: Settings, tmp_path: Path, busy_port: int
) -> None:
    redis_url = {"STREAMREC_REDIS_URL": dev_stack.redis_url}
    code, output, _ = _run(
        ["serve", "--port", str(free_port())], tmp_path,
        STREAMREC_REGISTRY=str(tmp_path / "empty"), **redis_url,
    )  # fmt: skip
    assert code == 1 and "streamrec train --data FILE" in output, output
    assert output.count("\n") == 1, output

    code, output, _ = _run(
        ["serve", "--port", str(busy_port)], tmp_path,
        STREAMREC_REGISTRY=str(tmp_path / "empty"), **redis_url,
    )  # fmt: skip
    assert code == 1 and f"port {busy_port} on 127.0.0.1 is in use" in output, output

    code, output, _ = _run(
        ["worker"], tmp_path, STREAMREC_WORKER_WEB_PORT=str(busy_port), **redis_url,
        STREAMREC_KAFKA_BOOTSTRAP=dev_stack.kafka_bootstrap,
    )  # fmt: skip
    assert code == 1 and "STREAMREC_WORKER_WEB_PORT" in output, output

    code, output, took_s = _run(
        ["worker"], tmp_path, STREAMREC_KAFKA_BOOTSTRAP="127.0.0.1:1",
        STREAMREC_WORKER_WEB_PORT=str(free_port()), **redis_url,
    )  # fmt: skip
    assert code == 1 and "cannot reach Kafka at 127.0.0.1:1" in output, output
    assert output.count("\n") == 1, output
    # Said in seconds (the client's own bootstrap timeout is 30 s); loose for a busy CI.
    assert took_s < 15, took_s
