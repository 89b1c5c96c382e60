"""Event files: our JSONL and CSV, the Taobao UserBehavior CSV and session-rec's
session files (`SessionId ItemId Time`, a session as the user); the replaying of
them into Kafka is `streamrec/producer.py`'s. Item files are `item_files.py`'s.

Each reader yields `(line_number, Event | Rejection)` so a caller can report
exactly which line was bad and why. This is the one reader of event files: the
producer, the trainer and the benchmarks all detect formats and judge rows here.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import orjson

from streamrec.errors import InputFormatError
from streamrec.events import Event, EventType, Rejection, RejectReason, parse_event

TAOBAO_BEHAVIOR = {
    "pv": EventType.CLICK,
    "buy": EventType.PURCHASE,
    "cart": EventType.ADD_TO_CART,
    "fav": EventType.FAVORITE,
}


class FileFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    TAOBAO = "taobao"
    SESSIONS = "sessions"


# A header naming any of these is our schema as CSV columns. A header without
# `event_id` still reads as CSV, so each row is rejected with the contract's reason.
CSV_FIELDS = frozenset(("event_id", "user_id", "item_id", "type", "ts"))


def detect_format(path: Path) -> FileFormat:
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        return FileFormat.JSONL
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    if first.startswith("{"):
        return FileFormat.JSONL
    if first.split()[:3] == ["SessionId", "ItemId", "Time"]:
        return FileFormat.SESSIONS
    if CSV_FIELDS & {name.strip() for name in first.split(",")}:
        return FileFormat.CSV
    if len(first.split(",")) == 5:
        return FileFormat.TAOBAO
    raise InputFormatError(
        f"{path}: cannot tell the format from the first line {first[:80]!r}; "
        "expected JSONL, a CSV with an event_id header, Taobao UserBehavior CSV "
        "or a session file with the header 'SessionId ItemId Time'"
    )


def read_events(
    path: Path, fmt: FileFormat | None = None, *, strict: bool = False
) -> Iterator[tuple[int, Event | Rejection]]:
    """Every row of `path` judged by the event contract. With `strict`, the first bad
    row raises `InputFormatError` (`bad_row_message`) instead of being yielded."""
    fmt = fmt or detect_format(path)
    readers = {
        FileFormat.JSONL: _read_jsonl,
        FileFormat.CSV: _read_csv,
        FileFormat.SESSIONS: _read_sessions,
        FileFormat.TAOBAO: _read_taobao,
    }
    rows = readers[fmt](path)
    if not strict:
        yield from rows
        return
    for line_number, parsed in rows:
        if isinstance(parsed, Rejection):
            raise InputFormatError(bad_row_message(path, line_number, parsed))
        yield line_number, parsed


def bad_row_message(path: Path, line_number: int, rejection: Rejection) -> str:
    """How every command names a bad row it stops at: file, line and the contract's reason."""
    return f"{path}:{line_number}: {rejection.reason}: {rejection.detail}"


def _read_jsonl(path: Path) -> Iterator[tuple[int, Event | Rejection]]:
    with open(path, "rb") as fh:
        for line_number, line in enumerate(fh, start=1):
            if line.strip():
                yield line_number, parse_event(line.rstrip(b"\r\n"))


def _read_csv(path: Path) -> Iterator[tuple[int, Event | Rejection]]:
    with open(path, newline="", encoding="utf-8") as fh:
        for line_number, row in enumerate(csv.DictReader(fh), start=2):
            body: dict[str, object] = {k: v for k, v in row.items() if k and v not in (None, "")}
            ts = body.get("ts")
            if isinstance(ts, str) and ts.lstrip("-").isdigit():
                body["ts"] = int(ts)
            for name in ("price", "quantity"):
                value = body.get(name)
                if isinstance(value, str):
                    # A non-number stays a string, which parse_event rejects with a reason.
                    with contextlib.suppress(ValueError):
                        body[name] = float(value)
            yield line_number, parse_event(orjson.dumps(body))


def _read_taobao(path: Path) -> Iterator[tuple[int, Event | Rejection]]:
    with open(path, encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            yield line_number, taobao_event(line_number, line)


def taobao_event(line_number: int, line: str) -> Event | Rejection:
    """One UserBehavior row; the event id is the line number, so a replay dedups."""
    parts = line.rstrip("\r\n").split(",")
    if len(parts) != 5:
        return Rejection(RejectReason.MALFORMED_JSON, f"expected 5 columns, got {len(parts)}")
    user_id, item_id, category_id, behavior, seconds = parts
    event_type = TAOBAO_BEHAVIOR.get(behavior)
    if event_type is None:
        return Rejection(RejectReason.UNKNOWN_TYPE, f"behavior {behavior!r} is not pv/buy/cart/fav")
    if not seconds.isdigit():
        return Rejection(RejectReason.BAD_TIMESTAMP, f"timestamp {seconds!r} is not epoch seconds")
    return Event(
        event_id=f"taobao-{line_number}",
        user_id=user_id,
        item_id=item_id,
        type=event_type,
        ts_ms=int(seconds) * 1000,
        context={"category_id": category_id},
    )


def _read_sessions(path: Path) -> Iterator[tuple[int, Event | Rejection]]:
    with open(path, encoding="utf-8") as fh:
        fh.readline()
        for line_number, line in enumerate(fh, start=2):
            yield line_number, session_event(line)


def session_event(line: str) -> Event | Rejection:
    """One session-rec row as a click by the session. The event id is made of the
    row's content, so the same click in two files (or replayed twice) dedups."""
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) != 3:
        return Rejection(
            RejectReason.MALFORMED_JSON, f"expected 3 tab-separated columns, got {len(parts)}"
        )
    session_id, item_id, seconds = parts
    try:
        ts_ms = round(float(seconds) * 1000)
    except ValueError:
        return Rejection(RejectReason.BAD_TIMESTAMP, f"time {seconds!r} is not epoch seconds")
    return Event(
        event_id=f"s{session_id}-{item_id}-{ts_ms}",
        user_id=session_id,
        item_id=item_id,
        type=EventType.CLICK,
        ts_ms=ts_ms,
    )
