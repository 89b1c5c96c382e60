"""`streamrec demo` end to end, as `make demo` runs it (on the test session's stack)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamrec.settings import Settings

pytestmark = pytest.mark.integration


def test_demo_trains_serves_and_shows_recommendations_change(dev_stack: Settings) -> None:
    env = {**os.environ, "STREAMREC_HOME": str(dev_stack.home), "COLUMNS": "160"}
    env.pop("STREAMREC_REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--events", "400", "--rate", "1000"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied 400 · to DLQ 3" in done.stdout
    assert "Recommendations before and after" in done.stdout
    assert "published v" in done.stdout  # it trained and published a model first
    assert "streamrec state u" in done.stdout
