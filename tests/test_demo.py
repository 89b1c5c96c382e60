"""`streamrec demo` end to end, as `make demo` runs it (on the test session's stack)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from streamrec import registry
from streamrec.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_trains_serves_and_shows_recommendations_change(
    dev_stack: Settings, tmp_path: Path
) -> None:
    """...on a pipeline of its own: the user's registry, Redis database and archive
    are untouched."""
    users_registry = tmp_path / "registry"
    env = {
        **os.environ,
        "STREAMREC_HOME": str(dev_stack.home),
        "STREAMREC_REGISTRY": str(users_registry),
        "COLUMNS": "160",
    }
    env.pop("STREAMREC_REDIS_URL", None)
    users_redis = redis.Redis.from_url(dev_stack.redis_url)
    users_redis.flushdb()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--events", "400", "--rate", "1000"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied 400 · to DLQ 3" in done.stdout
    assert "Recommendations before and after" in done.stdout
    assert "published v" in done.stdout  # it trained and published a model first
    assert "streamrec state u" in done.stdout
    assert not users_registry.exists() and users_redis.dbsize() == 0
    assert registry.current_version(dev_stack.home / "demo" / "registry") is not None
