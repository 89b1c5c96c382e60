"""The event archive: accepted events, append-only, in hourly segments by arrival time.

The stream worker appends every event it applied (or found already applied) with
the Kafka topic/partition/offset it came from; retraining reads a time window
back. Folders it creates are 0700 and files 0600 (user data). Writes are
at-least-once (a crash between the Redis write and the archive write is
replayed), so `read_archive` drops repeated event ids.

A forgotten user is first written to the forget list, which every read filters
by; `compact` then rewrites the segment files that held the user's rows. A crash
between the two leaves rows on disk that no reader returns.

    <archive>/<YYYYmmddTHH>/<topic>.<partition>.<writer>.jsonl
    <archive>/forgotten/<writer>.jsonl      one line per forget applied
"""

from __future__ import annotations

import hashlib
import heapq
import os
import shutil
import socket
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

from streamrec.errors import ArchiveError
from streamrec.events import Event, Rejection, parse_event

SEGMENT_FORMAT = "%Y%m%dT%H"
# Events are user data: only the writer's own user reads them.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
FORGOTTEN_DIR = "forgotten"
# Another writer's segment file is rewritten only this long after its hour ended:
# an append dated just before the hour's end may still be on its way to the file.
SETTLE_S = 60


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
        # Held by each append and by `compact` while it rewrites one of this writer's
        # files: an append never goes to a file about to be replaced.
        self.lock = threading.Lock()

    def append(self, records: Iterable[ArchivedEvent]) -> int:
        with self.lock:
            return self._append(records)

    def owns(self, path: Path) -> bool:
        return path.name.endswith(f".{self.writer_id}.jsonl")

    def close_file(self, path: Path) -> None:
        """Close this writer's handle on `path` (the next append opens it again)."""
        for key in [k for k in self._files if self._path(*k) == path]:
            self._files.pop(key).close()

    def _path(self, segment: str, topic: str, partition: int) -> Path:
        return self.root / segment / f"{topic}.{partition}.{self.writer_id}.jsonl"

    def _append(self, records: Iterable[ArchivedEvent]) -> int:
        written = 0
        # A batch's records share one arrival time: its segment is named once.
        named_ms, segment = -1, ""
        for record in records:
            if record.arrived_ms != named_ms:
                named_ms = record.arrived_ms
                segment = segment_name(datetime.fromtimestamp(named_ms / 1000, UTC))
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
            path = self._path(segment, topic, partition)
            folder = path.parent
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
    root: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    forgotten: Forgotten | None = None,
) -> Iterator[ArchivedEvent]:
    """Archived events that arrived in [since, until), each event id once, hour by hour,
    but none of a forgotten user's (`forgotten`, by default the list as it is now)."""
    forgotten = forgotten if forgotten is not None else read_forgotten(root)
    seen: set[str] = set()
    for start, folder in segments(root):
        if since is not None and start + timedelta(hours=1) <= since:
            continue
        if until is not None and start >= until:
            break
        # Each file is one writer's appends to one partition, in arrival order: merged,
        # not read whole and sorted, so an hour of events is never all in memory.
        files = [_read_segment_file(path) for path in sorted(folder.glob("*.jsonl"))]
        for record in heapq.merge(*files, key=_arrival_order):
            arrived = datetime.fromtimestamp(record.arrived_ms / 1000, UTC)
            if (since is not None and arrived < since) or (until is not None and arrived >= until):
                continue
            if record.event.event_id in seen or forgotten.hides(
                record.event.user_id, record.arrived_ms
            ):
                continue
            seen.add(record.event.event_id)
            yield record


def _arrival_order(record: ArchivedEvent) -> tuple[int, str, int, int]:
    return record.arrived_ms, record.topic, record.partition, record.offset


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


def prune(
    root: Path, retention_s: float, now: datetime | None = None, writer: ArchiveWriter | None = None
) -> list[str]:
    """Delete whole segments older than the retention; return their names. The
    writer's forget list loses the entries older than every segment left."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=retention_s)
    removed = []
    for start, folder in segments(root):
        if start + timedelta(hours=1) <= cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if writer is not None:
        _prune_forgotten(writer, int((cutoff - timedelta(hours=1)).timestamp() * 1000))
    return removed


# Forgetting users ---------------------------------------------------------------


def user_digest(user_id: str) -> str:
    """How the forget list names a user: a digest, so the list itself holds no id."""
    return hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Forgotten:
    """The forget list as read: per user digest, when the latest forget was applied.
    A user's rows that arrived until then are hidden; later ones are new events."""

    applied_ms: dict[str, int] = field(default_factory=dict)
    # Forgets applied in all (a user forgotten twice counts twice), and the latest.
    count: int = 0
    last_applied_ms: int | None = None

    def hides(self, user_id: str, arrived_ms: int) -> bool:
        if not self.applied_ms:
            return False
        until = self.applied_ms.get(user_digest(user_id))
        return until is not None and arrived_ms <= until

    def to_json_dict(self) -> dict[str, int | None]:
        """The forget horizon a bundle's manifest records."""
        return {"forgets_applied": self.count, "last_forget_applied_ms": self.last_applied_ms}


def record_forget(writer: ArchiveWriter, user_id: str, applied_ms: int) -> None:
    """Add the user to this writer's forget list, durably (fsync) before returning:
    from here on no read returns the rows that arrived until `applied_ms`."""
    folder = writer.root / FORGOTTEN_DIR
    line = orjson.dumps({"user": user_digest(user_id), "applied_ms": applied_ms}) + b"\n"
    with writer.lock:
        try:
            writer.root.parent.mkdir(parents=True, exist_ok=True)
            for private in (writer.root, folder):
                private.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
            path = folder / f"{writer.writer_id}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ArchiveError(f"cannot write the forget list at {folder}: {exc}") from exc


def read_forgotten(root: Path) -> Forgotten:
    applied: dict[str, int] = {}
    count, last = 0, None
    folder = root / FORGOTTEN_DIR
    for path in sorted(folder.glob("*.jsonl")) if folder.exists() else []:
        for entry in _forget_entries(path):
            user, at = entry["user"], int(entry["applied_ms"])
            applied[user] = max(applied.get(user, at), at)
            count += 1
            last = at if last is None else max(last, at)
    return Forgotten(applied, count, last)


def _forget_entries(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as handle:
        for line in handle:
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line: its forget was not acknowledged


def _prune_forgotten(writer: ArchiveWriter, before_ms: int) -> None:
    """Drop this writer's entries applied before `before_ms`: every row they hide arrived
    before then, in segments retention has removed."""
    path = writer.root / FORGOTTEN_DIR / f"{writer.writer_id}.jsonl"
    if not path.exists():
        return
    with writer.lock:
        kept = [e for e in _forget_entries(path) if int(e["applied_ms"]) >= before_ms]
        _replace(path, b"".join(orjson.dumps(e) + b"\n" for e in kept))


@dataclass
class Compaction:
    """What one `compact` pass did."""

    files_rewritten: int = 0
    rows_removed: int = 0
    # Other writers' files of the hour still being written: left to a later pass.
    files_deferred: int = 0
    # Rows removed per user digest (`user_digest`).
    rows_by_user: dict[str, int] = field(default_factory=dict)


def compact(
    writer: ArchiveWriter,
    forgotten: Forgotten | None = None,
    partitions: Collection[tuple[str, int]] | None = None,
    now: datetime | None = None,
    user_ids: Collection[str] | None = None,
) -> Compaction:
    """Rewrite every segment file holding rows the forget list hides, without them:
    only the files of `partitions` (topic and partition) when given, and, when
    `user_ids` are given, only files whose bytes name one of them (a search, not a
    parse: these users' rows only). Blocking: run it in a thread. This writer's own
    files are rewritten under its lock; another writer's only once their hour is
    over (`SETTLE_S`), since renaming a file under a writer that still appends to
    it would lose its next appends."""
    forgotten = forgotten if forgotten is not None else read_forgotten(writer.root)
    report = Compaction()
    if not forgotten.applied_ms:
        return report
    prefixes = tuple(f"{t}.{p}." for t, p in partitions) if partitions is not None else None
    # How an archived row names its user: the event's JSON as orjson wrote it.
    needles = [b'"user_id":' + orjson.dumps(u) for u in user_ids] if user_ids is not None else []
    settled = (now or datetime.now(UTC)) - timedelta(hours=1, seconds=SETTLE_S)
    for start, folder in segments(writer.root):
        for path in sorted(folder.glob("*.jsonl")):
            if prefixes is not None and not path.name.startswith(prefixes):
                continue
            if user_ids is not None and not _names_any(path, needles):
                continue
            if writer.owns(path):
                with writer.lock:
                    writer.close_file(path)
                    removed = _rewrite_without(path, forgotten)
            elif start <= settled:
                removed = _rewrite_without(path, forgotten)
            else:
                report.files_deferred += any(
                    forgotten.hides(r.event.user_id, r.arrived_ms) for r in _read_segment_file(path)
                )
                continue
            for digest, rows in removed.items():
                report.rows_by_user[digest] = report.rows_by_user.get(digest, 0) + rows
                report.rows_removed += rows
            report.files_rewritten += bool(removed)
    return report


def _names_any(path: Path, needles: list[bytes]) -> bool:
    content = path.read_bytes()
    return any(needle in content for needle in needles)


def _rewrite_without(path: Path, forgotten: Forgotten) -> dict[str, int]:
    """Rewrite the file without the rows `forgotten` hides; how many, per user digest."""
    kept, removed = [], Counter[str]()
    with open(path, "rb") as handle:
        for line in handle:
            try:
                row = orjson.loads(line)
                user_id, arrived_ms = str(row["event"]["user_id"]), int(row["arrived_ms"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                kept.append(line)  # a torn line: the reader skips it as before
                continue
            if forgotten.hides(user_id, arrived_ms):
                removed[user_digest(user_id)] += 1
            else:
                kept.append(line)
    if removed:
        _replace(path, b"".join(kept))
    return dict(removed)


def _replace(path: Path, content: bytes) -> None:
    """Write `content` beside `path`, fsync, rename over it, fsync the folder: a crash
    leaves the old file or the new one, never a mix."""
    staging = path.with_name(f".{path.name}.rewrite")
    try:
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
        folder_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
    except OSError as exc:
        raise ArchiveError(f"cannot rewrite {path}: {exc}") from exc
