"""A version's lineage: what happened to it after it was published (started as an
arm, promoted, rolled back, stopped), one JSON line each in
`<registry>/<version>/LINEAGE.jsonl`. The manifest says where it came from
(`parent`, the data window); this file says what became of it."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LINEAGE = "LINEAGE.jsonl"


def append(root: Path, version: str, entry: Mapping[str, object]) -> None:
    """One line, written with O_APPEND in one write and fsynced: lines from two
    processes never interleave, and a crash leaves at most a torn last line, which
    `read` skips. The bundle's files and manifest are not touched (no checksum moves)."""
    line = json.dumps({"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}) + "\n"
    fd = os.open(root / version / LINEAGE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read(root: Path, version: str) -> list[dict[str, Any]]:
    """The version's lineage, oldest first; nothing for a version without one."""
    lines = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for text in (root / version / LINEAGE).read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(text))
    return lines
