"""`streamrec model ...` against a registry with bad entries in it: `list` lists them
with a reason, `verify`, `show`, `current` and `rollback` end in one line and exit 1,
never a traceback, and a refused rollback leaves CURRENT where it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from bench.scenarios.models import publish, serving_models
from cli import app
from streamrec import registry
from tests.streamrec.bad_bundles import BAD_BUNDLES, spoil


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    return tmp_path / "registry"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["model", *args])


def assert_one_line_refusal(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_list_survives_bad_folders_and_names_them(root: Path) -> None:
    models = serving_models()
    good = publish(models, root).version
    bad = publish(models, root, good, make_current=False).version
    (root / bad / registry.MANIFEST).write_text('{"version": ')
    (root / "v-half-copied").mkdir()
    listed = run("list")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert len(lines) == 3, listed.output
    assert lines[0].startswith(f"* {good}")
    unreadable = {line.split()[1]: line for line in lines[1:] if line.startswith("! ")}
    assert set(unreadable) == {bad, "v-half-copied"}
    assert "not valid JSON" in unreadable[bad]
    assert "manifest.json is missing" in unreadable["v-half-copied"]

    (root / registry.CURRENT).write_text("not json")
    listed = run("list")
    assert listed.exit_code == 0, listed.output
    assert f"  {good}" in listed.output and "CURRENT" in listed.output
    assert_one_line_refusal(run("current"), "CURRENT")


@pytest.mark.parametrize("kind", sorted(BAD_BUNDLES))
def test_verify_of_a_bad_bundle_is_one_line_and_exit_1(root: Path, kind: str) -> None:
    version = publish(serving_models(), root).version
    spoil(root, version, kind)
    assert_one_line_refusal(run("verify", version), "refused", version)


def test_verify_show_and_rollback_of_what_is_not_a_bundle(root: Path) -> None:
    models = serving_models()
    first = publish(models, root).version
    second = publish(models, root, first).version
    spoil(root, first, "truncated_onnx")
    assert_one_line_refusal(run("rollback"), "refused", "ranker.onnx")
    assert_one_line_refusal(run("rollback", first), "refused", "ranker.onnx")
    assert registry.current_version(root) == second
    for name in ("CURRENT", "v-none", "../escape"):
        assert_one_line_refusal(run("verify", name), "refused")
        assert_one_line_refusal(run("show", name))
        assert_one_line_refusal(run("rollback", name))
    assert registry.current_version(root) == second
    (root / second / registry.MANIFEST).write_text("[]")
    assert_one_line_refusal(run("show", second), "JSON object")


def test_the_installed_command_prints_one_line(root: Path, tmp_path: Path) -> None:
    """Through `python -m cli`, as an operator runs it: no traceback on stderr."""
    version = publish(serving_models(), root).version
    spoil(root, version, "files_entry_not_an_object")
    env = {"STREAMREC_REGISTRY": str(root), "STREAMREC_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "model", "verify", version],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "vocab.json" in done.stderr
