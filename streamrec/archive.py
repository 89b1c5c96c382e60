"""The event archive: accepted events, append-only, in hourly segments by arrival time.

The stream worker appends every event it applied (or found already applied) with
the Kafka topic/partition/offset it came from; retraining reads a time window
back. Folders it creates are 0700 and files 0600 (user data). Writes are
at-least-once (a crash between the Redis write and the archive write is
replayed), so `read_archive` drops repeated event ids.

    <archive>/<YYYYmmddTHH>/<topic>.<partition>.<writer>.jsonl
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import orjson

from streamrec.errors import ArchiveError
from streamrec.events import Event, Rejection, parse_event

SEGMENT_FORMAT = "%Y%m%dT%H"
# Events are user data: only the writer's own user reads them.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class ArchivedEvent:
    event: Event
    topic: str
    partition: int
    offset: int
    arrived_ms: int


def segment_name(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(SEGMENT_FORMAT)


class ArchiveWriter:
    """Open segment files of one writer process; `close()` flushes them."""

    def __init__(self, root: Path, writer_id: str | None = None) -> None:
        self.root = root
        self.writer_id = writer_id or f"{socket.gethostname()}-{os.getpid()}"
        self._files: dict[tuple[str, str, int], IO[bytes]] = {}

    def append(self, records: Iterable[ArchivedEvent]) -> int:
        written = 0
        for record in records:
            segment = segment_name(datetime.fromtimestamp(record.arrived_ms / 1000, UTC))
            handle = self._file(segment, record.topic, record.partition)
            handle.write(
                orjson.dumps(
                    {
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "arrived_ms": record.arrived_ms,
                        "event": orjson.Fragment(record.event.to_json()),
                    }
                )
                + b"\n"
            )
            written += 1
        for handle in self._files.values():
            handle.flush()
        return written

    def _file(self, segment: str, topic: str, partition: int) -> IO[bytes]:
        key = (segment, topic, partition)
        handle = self._files.get(key)
        if handle is None:
            # A new hour: close the previous hour's files of this writer.
            for old_key in [k for k in self._files if k[0] != segment]:
                self._files.pop(old_key).close()
            folder = self.root / segment
            path = folder / f"{topic}.{partition}.{self.writer_id}.jsonl"
            try:
                self.root.parent.mkdir(parents=True, exist_ok=True)
                for private in (self.root, folder):
                    private.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
                handle = os.fdopen(fd, "ab")
            except OSError as exc:
                raise ArchiveError(f"cannot write the archive at {folder}: {exc}") from exc
            self._files[key] = handle
        return handle

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def segments(root: Path) -> list[tuple[datetime, Path]]:
    """(segment start, folder), oldest first; folders not named like segments are ignored."""
    found = []
    for folder in root.iterdir() if root.exists() else []:
        try:
            start = datetime.strptime(folder.name, SEGMENT_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            continue
        found.append((start, folder))
    return sorted(found)


def read_archive(
    root: Path, since: datetime | None = None, until: datetime | None = None
) -> Iterator[ArchivedEvent]:
    """Archived events that arrived in [since, until), each event id once, hour by hour."""
    seen: set[str] = set()
    for start, folder in segments(root):
        if since is not None and start + timedelta(hours=1) <= since:
            continue
        if until is not None and start >= until:
            break
        records: list[ArchivedEvent] = []
        for path in sorted(folder.glob("*.jsonl")):
            records.extend(_read_segment_file(path))
        records.sort(key=lambda r: (r.arrived_ms, r.topic, r.partition, r.offset))
        for record in records:
            arrived = datetime.fromtimestamp(record.arrived_ms / 1000, UTC)
            if (since is not None and arrived < since) or (until is not None and arrived >= until):
                continue
            if record.event.event_id in seen:
                continue
            seen.add(record.event.event_id)
            yield record


def _read_segment_file(path: Path) -> Iterator[ArchivedEvent]:
    with open(path, "rb") as handle:
        for line in handle:
            # A torn last line (the writer died mid-write) is skipped, not fatal.
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            event = parse_event(orjson.dumps(row["event"]))
            if isinstance(event, Rejection):
                continue
            yield ArchivedEvent(
                event, row["topic"], row["partition"], row["offset"], row["arrived_ms"]
            )


def prune(root: Path, retention_s: float, now: datetime | None = None) -> list[str]:
    """Delete whole segments older than the retention; return their names."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=retention_s)
    removed = []
    for start, folder in segments(root):
        if start + timedelta(hours=1) <= cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
