"""`streamrec demo` end to end, as `make demo` runs it (on the test session's stack)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamrec.settings import Settings

pytestmark = pytest.mark.integration


def test_demo_replays_the_sample_and_counts_the_bad_messages(dev_stack: Settings) -> None:
    env = {**os.environ, "STREAMREC_HOME": str(dev_stack.home), "COLUMNS": "120"}
    env.pop("STREAMREC_REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "demo", "--events", "300", "--rate", "1000"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied 300 · to DLQ 3" in done.stdout
    assert "streamrec state u" in done.stdout
