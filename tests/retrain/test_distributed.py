"""`streamrec train --nproc 2`: two processes under torchrun (gloo), one bundle."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrain.distributed import without_nproc
from streamrec import registry
from tests.retrain.session_events import write_session_events

pytestmark = pytest.mark.slow


def test_without_nproc_drops_the_option_in_both_spellings() -> None:
    argv = ["train", "--data", "x", "--nproc", "2", "--quiet", "--nproc=3"]
    assert without_nproc(argv) == ["train", "--data", "x", "--quiet"]


def test_train_in_two_processes_publishes_one_version_trained_by_both(tmp_path: Path) -> None:
    events = write_session_events(tmp_path / "events.jsonl", 600)
    env = {
        **os.environ,
        "STREAMREC_REGISTRY": str(tmp_path / "registry"),
        "STREAMREC_HOME": str(tmp_path / "home"),
    }
    args = ["train", "--data", str(events), "--epochs", "1", "--dim", "16", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args, "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    # Rank 0 alone went on to the ranker, the export and the publish.
    assert done.stdout.count("published ") == 1, done.stdout
    versions = registry.list_versions(tmp_path / "registry")
    assert len(versions) == 1
    training = json.loads(versions[0].to_json())["training"]
    assert training["encoder_processes"] == 2
    assert len(training["encoder_epochs"]) == 1
    assert registry.current_version(tmp_path / "registry") == versions[0].version
