"""Reading interaction logs into per-user (or per-session) event sequences.

Formats: `jsonl` (our event schema), `csv` (our schema as columns), `taobao`
(UserBehavior: user_id,item_id,category_id,behavior,timestamp), `sessions`
(session-rec: SessionId ItemId Time, tab-separated) and `srgnn` (the SR-GNN
yoochoose1_64 text files: a folder with train_sessions.txt and test.txt).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streamrec.errors import InputFormatError
from streamrec.events import Event, EventType, Rejection, parse_event, parse_timestamp

FORMATS = ("jsonl", "csv", "taobao", "sessions", "srgnn")

TAOBAO_BEHAVIOURS = {
    "pv": EventType.CLICK,
    "buy": EventType.PURCHASE,
    "cart": EventType.ADD_TO_CART,
    "fav": EventType.FAVORITE,
}


@dataclass(frozen=True, slots=True)
class UserSequence:
    """One user's (or session's) events, oldest first."""

    user_id: str
    item_ids: tuple[str, ...]
    types: tuple[EventType, ...]
    ts_ms: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NextItemCases:
    """Held-out cases: the events so far and the event that came next."""

    prefixes: list[UserSequence]
    targets: list[str]
    target_types: list[EventType]


@dataclass(frozen=True, slots=True)
class SrgnnSplit:
    train: list[UserSequence]
    test: NextItemCases


def load_sequences(path: Path, fmt: str) -> list[UserSequence]:
    """The training sequences in `path`. For `srgnn` that is the training file only."""
    if fmt == "srgnn":
        return load_srgnn(path).train
    readers = {
        "jsonl": _read_jsonl,
        "csv": _read_csv,
        "taobao": _read_taobao,
        "sessions": _read_sessions,
    }
    if fmt not in readers:
        raise InputFormatError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not path.is_file():
        raise InputFormatError(f"expected an event file at {path}, found none")
    return group_by_user(readers[fmt](path))


def guess_format(path: Path) -> str:
    if path.is_dir():
        return "srgnn"
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".txt":
        return "sessions"
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    return "csv" if "user_id" in first else "taobao"


def group_by_user(events: Iterable[tuple[str, str, EventType, int]]) -> list[UserSequence]:
    """Events (user, item, type, ts_ms) into sequences; ties keep file order."""
    by_user: dict[str, list[tuple[int, int, str, EventType]]] = defaultdict(list)
    for order, (user_id, item_id, event_type, ts_ms) in enumerate(events):
        by_user[user_id].append((ts_ms, order, item_id, event_type))
    sequences = []
    for user_id, rows in by_user.items():
        rows.sort()
        sequences.append(
            UserSequence(
                user_id=user_id,
                item_ids=tuple(row[2] for row in rows),
                types=tuple(row[3] for row in rows),
                ts_ms=tuple(row[0] for row in rows),
            )
        )
    sequences.sort(key=lambda seq: (seq.ts_ms[0], seq.user_id))
    return sequences


def load_srgnn(folder: Path) -> SrgnnSplit:
    train_path, test_path = folder / "train_sessions.txt", folder / "test.txt"
    for path in (train_path, test_path):
        if not path.is_file():
            raise InputFormatError(f"expected the SR-GNN file {path}, found none")
    train = []
    with train_path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            items = tuple(line.split())
            if items:
                # No timestamps in this format: one millisecond per step keeps order.
                train.append(
                    UserSequence(
                        user_id=f"s{number}",
                        item_ids=items,
                        types=(EventType.CLICK,) * len(items),
                        ts_ms=tuple(range(len(items))),
                    )
                )
    prefixes, targets = [], []
    with test_path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            prefix, sep, target = line.rstrip("\n").partition("\t")
            if not sep or not target.strip() or not prefix.strip():
                raise InputFormatError(
                    f"{test_path}:{number}: expected 'prefix<TAB>next', got {line!r}"
                )
            items = tuple(prefix.split())
            prefixes.append(
                UserSequence(
                    f"t{number}", items, (EventType.CLICK,) * len(items), tuple(range(len(items)))
                )
            )
            targets.append(target.strip())
    test = NextItemCases(
        prefixes=prefixes, targets=targets, target_types=[EventType.CLICK] * len(targets)
    )
    return SrgnnSplit(train=train, test=test)


def _read_jsonl(path: Path) -> Iterator[tuple[str, str, EventType, int]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parsed = parse_event(line.strip())
            if isinstance(parsed, Rejection):
                raise InputFormatError(f"{path}:{number}: {parsed.reason}: {parsed.detail}")
            assert isinstance(parsed, Event)
            yield parsed.user_id, parsed.item_id, parsed.type, parsed.ts_ms


def _read_csv(path: Path) -> Iterator[tuple[str, str, EventType, int]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"user_id", "item_id", "type", "ts"} - set(reader.fieldnames or ())
        if missing:
            raise InputFormatError(
                f"{path}: expected columns user_id,item_id,type,ts; missing {sorted(missing)}"
            )
        for number, row in enumerate(reader, start=2):
            raw_ts = row["ts"]
            ts_ms = parse_timestamp(int(raw_ts) if raw_ts.isdigit() else raw_ts)
            if isinstance(ts_ms, Rejection):
                raise InputFormatError(f"{path}:{number}: {ts_ms.detail}")
            try:
                event_type = EventType(row["type"])
            except ValueError:
                raise InputFormatError(
                    f"{path}:{number}: unknown event type {row['type']!r}"
                ) from None
            yield row["user_id"], row["item_id"], event_type, ts_ms


def _read_taobao(path: Path) -> Iterator[tuple[str, str, EventType, int]]:
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 5 or row[3] not in TAOBAO_BEHAVIOURS or not row[4].isdigit():
                raise InputFormatError(
                    f"{path}:{number}: expected user_id,item_id,category_id,pv|buy|cart|fav,"
                    f"epoch seconds; got {','.join(row)[:80]!r}"
                )
            yield row[0], row[1], TAOBAO_BEHAVIOURS[row[3]], int(row[4]) * 1000


def _read_sessions(path: Path) -> Iterator[tuple[str, str, EventType, int]]:
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().split()
        if header[:3] != ["SessionId", "ItemId", "Time"]:
            raise InputFormatError(
                f"{path}: expected the header 'SessionId ItemId Time', got {header}"
            )
        for number, line in enumerate(handle, start=2):
            fields = line.split("\t")
            if len(fields) < 3:
                raise InputFormatError(f"{path}:{number}: expected 3 tab-separated fields")
            yield fields[0], fields[1], EventType.CLICK, round(float(fields[2]) * 1000)
