"""`streamrec dev up | status | down` in a home of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from cli.demo import demo_settings
from streamrec import __version__
from streamrec.errors import StreamrecError
from streamrec.settings import Settings

pytestmark = pytest.mark.integration


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env["STREAMREC_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dev_up_writes_addresses_that_the_other_commands_find(tmp_path: Path) -> None:
    up = run(tmp_path, "dev", "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        described = orjson.loads((tmp_path / "dev.json").read_bytes())
        status = run(tmp_path, "dev", "status")
        assert status.returncode == 0
        assert described["kafka_bootstrap"] in status.stdout
        assert described["redis_url"] in status.stdout
        # `streamrec state` finds Redis without flags, and says when it knows no such user.
        state = run(tmp_path, "state", "nobody")
        assert state.returncode == 1, state.stdout + state.stderr
        assert "no state for user 'nobody'" in state.stderr and "Traceback" not in state.stderr
    finally:
        down = run(tmp_path, "dev", "down")
    assert down.returncode == 0
    assert run(tmp_path, "dev", "status").returncode == 1


def test_dev_up_cluster_starts_a_redis_cluster_the_demo_resets(tmp_path: Path) -> None:
    up = run(tmp_path, "dev", "up", "--cluster")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        described = orjson.loads((tmp_path / "dev.json").read_bytes())
        assert described["redis_url"].startswith("redis+cluster://")
        assert len(described["redis_cluster_pids"]) == 3
        status = run(tmp_path, "dev", "status")
        assert status.returncode == 0 and "redis:  up" in status.stdout, status.stdout
        state = run(tmp_path, "state", "nobody")  # read through the cluster client
        assert "no state for user 'nobody'" in state.stderr, state.stdout + state.stderr

        settings = Settings(home=tmp_path)
        assert settings.redis_is_cluster
        client = redis.RedisCluster.from_url(settings.redis_node_url)
        client.set("sr:u:{someone}:meta", "1")
        assert demo_settings(settings).redis_url == settings.redis_url
        assert client.dbsize() == 0  # every primary flushed
        client.close()
    finally:
        down = run(tmp_path, "dev", "down")
    assert down.returncode == 0
    assert run(tmp_path, "dev", "status").returncode == 1


def test_the_demo_refuses_a_cluster_that_is_not_the_dev_stacks(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, redis_url="redis+cluster://127.0.0.1:1/0")
    with pytest.raises(StreamrecError, match="dev up --cluster"):
        demo_settings(settings)


def test_unreachable_kafka_and_redis_are_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env |= {
        "STREAMREC_HOME": str(tmp_path),
        "STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "STREAMREC_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    for args, expected in (
        (["topics"], "cannot reach Kafka"),
        (["state", "u1"], "cannot read Redis"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        assert expected in done.stderr
        assert "Traceback" not in done.stderr


def test_version(tmp_path: Path) -> None:
    done = run(tmp_path, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"streamrec {__version__}"
