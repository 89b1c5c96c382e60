"""Reading interaction logs into per-user (or per-session) event sequences.

Event files (JSONL, CSV, Taobao UserBehavior, session-rec) are read by the one
reader, `streamrec.event_files`, under the same rules as `streamrec produce`: bad rows
are skipped and counted, or stop the read with `strict`. The other format is
`srgnn`: the SR-GNN yoochoose1_64 text files, a folder with train_sessions.txt
and test.txt, which holds no events (no ids, no times) and is read here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streamrec.errors import InputFormatError
from streamrec.event_files import FileFormat, detect_format, read_events
from streamrec.events import EventType, Rejection

SRGNN = "srgnn"
FORMATS = (*(f.value for f in FileFormat), SRGNN)


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


@dataclass(frozen=True, slots=True)
class EventLog:
    """A file read for training: its format, its sequences and the rows skipped; and
    each item's category where the events carry one (a Taobao file's
    `category_id`: the catalogue `streamrec items load --from-taobao` sends)."""

    fmt: str
    sequences: list[UserSequence]
    skipped: list[tuple[int, Rejection]]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return sum(len(sequence.item_ids) for sequence in self.sequences)

    @property
    def n_items(self) -> int:
        return len({item_id for sequence in self.sequences for item_id in sequence.item_ids})


def read_sequences(path: Path, fmt: str | None = None, *, strict: bool = False) -> EventLog:
    """The training sequences in `path`, the format detected when not given (a folder
    is `srgnn`). For `srgnn` they are the training file's only."""
    if fmt == SRGNN or (fmt is None and path.is_dir()):
        return EventLog(SRGNN, load_srgnn(path).train, [])
    if fmt is not None and fmt not in FORMATS:
        raise InputFormatError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not path.is_file():
        raise InputFormatError(f"expected an event file at {path}, found none")
    file_format = FileFormat(fmt) if fmt else detect_format(path)
    skipped: list[tuple[int, Rejection]] = []
    categories: dict[str, tuple[str, ...]] = {}

    def accepted() -> Iterator[tuple[str, str, EventType, int]]:
        for line_number, parsed in read_events(path, file_format, strict=strict):
            if isinstance(parsed, Rejection):
                skipped.append((line_number, parsed))
                continue
            if file_format is FileFormat.TAOBAO and parsed.context:
                categories[parsed.item_id] = (str(parsed.context["category_id"]),)
            yield parsed.user_id, parsed.item_id, parsed.type, parsed.ts_ms

    sequences = group_by_user(accepted())
    return EventLog(file_format.value, sequences, skipped, categories)


def load_sequences(path: Path, fmt: str) -> list[UserSequence]:
    """The training sequences in `path`; bad rows are skipped (`read_sequences` lists them)."""
    return read_sequences(path, fmt).sequences


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
