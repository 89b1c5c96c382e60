"""`streamrec experiment start / status / stop / promote` on a registry of real
bundles: each change is in the record and the log, and a mistake is one line on
stderr with exit code 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from bench.scenarios.models import publish, serving_models
from cli import app
from streamrec import experiments, registry


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    return tmp_path / "registry"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["experiment", *args])


def test_start_status_promote(root: Path) -> None:
    models = serving_models()
    first = publish(models, root).version
    second = publish(models, root, first, make_current=False).version
    started = run("start", "ranker-b", "--arm", "control=current:90", "--arm",
                  f"candidate={second}:10", "--salt", "s1")  # fmt: skip
    assert started.exit_code == 0, started.output
    assert started.output.splitlines() == [
        "started ranker-b (salt 's1')",
        "  control: current, 90.00% of users",
        f"  candidate: {second}, 10.00% of users",
    ]
    record = experiments.read(root)
    assert record is not None and record.salt == "s1"
    assert [(a.name, a.version, a.weight) for a in record.arms] == [
        ("control", "current", 90.0),
        ("candidate", second, 10.0),
    ]
    status = run("status")
    assert status.exit_code == 0, status.output
    assert status.output.startswith(f"ranker-b: started {record.started_at}, salt 's1'")

    again = run("start", "other", "--arm", "a=current:1", "--arm", f"b={second}:1")
    assert again.exit_code == 1
    assert "'ranker-b' runs; stop or promote it first" in again.output

    promoted = run("promote", "candidate")
    assert promoted.exit_code == 0, promoted.output
    assert promoted.output.strip() == f"promoted candidate of ranker-b: current is now {second}"
    assert registry.current_version(root) == second
    assert run("status").output.strip() == "no experiment runs"
    assert [line["action"] for line in experiments.history(root)] == ["started", "promoted"]


def test_stop_and_mistakes_end_in_one_line(root: Path) -> None:
    first = publish(serving_models(), root).version
    missing = run("start", "e", "--arm", "a=current:1", "--arm", "b=v-nope:1")
    assert missing.exit_code == 1
    assert "arm 'b': no bundle 'v-nope'" in missing.output
    malformed = run("start", "e", "--arm", "a=current", "--arm", f"b={first}:1")
    assert malformed.exit_code == 1 and "NAME=VERSION:WEIGHT" in malformed.output
    assert run("stop").exit_code == 1
    assert run("start", "e", "--arm", "a=current:1", "--arm", f"b={first}:3").exit_code == 0
    assert run("promote", "c").exit_code == 1
    stopped = run("stop")
    assert stopped.exit_code == 0 and stopped.output.strip() == "stopped e"
    assert experiments.read(root) is None and registry.current_version(root) == first


def test_the_console_script_runs_it(root: Path) -> None:
    first = publish(serving_models(), root).version
    env = {**os.environ, "STREAMREC_REGISTRY": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "experiment", "start", "e", "--arm", "a=current:1",
         "--arm", f"b={first}:1"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status = subprocess.run(
        [sys.executable, "-m", "cli", "experiment", "status"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert "  b: " + first + ", 50.00% of users" in status.stdout
