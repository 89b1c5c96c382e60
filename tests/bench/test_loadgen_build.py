"""`bench serve` runs the load generator it compiled itself, never a binary found at
a fixed path in the shared temporary folder (anyone on the machine could put one
there first)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from bench.serve import LOADGEN_SOURCE, loadgen_binary


def test_a_binary_planted_at_the_old_shared_path_is_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    digest = hashlib.sha256(LOADGEN_SOURCE.read_bytes()).hexdigest()[:12]
    planted = tmp_path / f"streamrec-loadgen-{digest}"
    planted.write_text("#!/bin/sh\necho planted\n")
    planted.chmod(0o755)
    loadgen_binary.cache_clear()
    try:
        binary = loadgen_binary()
    finally:
        loadgen_binary.cache_clear()
    assert binary is not None and binary != planted
    folder = binary.parent.stat()
    assert folder.st_uid == os.getuid() and stat.S_IMODE(folder.st_mode) & 0o077 == 0
    assert binary.read_bytes()[:4] == b"\x7fELF"
