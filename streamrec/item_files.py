"""Reading catalogue files to load: item records as JSONL or CSV, and the records a
Taobao UserBehavior file implies (each item's category, from its events).

Each reader yields `(line_number, ItemRecord | ItemDelete | Rejection)`, as the
event readers of `streamrec/event_files.py` do, so a caller can say which line was bad.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

from streamrec.errors import InputFormatError
from streamrec.event_files import FileFormat as EventFileFormat
from streamrec.event_files import read_events
from streamrec.events import Rejection
from streamrec.items import ItemChange, item_from_fields, parse_item

# A CSV cell holding several categories or tags separates them with this.
CSV_LIST_SEPARATOR = "|"
# A CSV column `attributes.<name>` is the attribute <name> (its value a string).
CSV_ATTRIBUTE_PREFIX = "attributes."
_CSV_FLAGS = {"true": True, "1": True, "false": False, "0": False}


class ItemFileFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


def detect_item_format(path: Path) -> ItemFileFormat:
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    if path.suffix in (".jsonl", ".json", ".ndjson") or first.startswith("{"):
        return ItemFileFormat.JSONL
    if "item_id" in first.strip().split(","):
        return ItemFileFormat.CSV
    raise InputFormatError(
        f"{path}: cannot tell the format from the first line {first[:80]!r}; expected "
        "JSONL or a CSV with an item_id header (a Taobao file needs --from-taobao)"
    )


def read_items(
    path: Path, fmt: ItemFileFormat | None = None
) -> Iterator[tuple[int, ItemChange | Rejection]]:
    if (fmt or detect_item_format(path)) is ItemFileFormat.JSONL:
        yield from _read_jsonl(path)
    else:
        yield from _read_csv(path)


def _read_jsonl(path: Path) -> Iterator[tuple[int, ItemChange | Rejection]]:
    with open(path, "rb") as fh:
        for line_number, line in enumerate(fh, start=1):
            if line.strip():
                yield line_number, parse_item(line.rstrip(b"\r\n"))


def _read_csv(path: Path) -> Iterator[tuple[int, ItemChange | Rejection]]:
    """Columns named as the record's fields; `category` and `tags` separated by `|`;
    `available` and `deleted` as true/false or 1/0. A cell that does not convert
    stays text, which the contract rejects with its reason."""
    with open(path, newline="", encoding="utf-8") as fh:
        for line_number, row in enumerate(csv.DictReader(fh), start=2):
            body: dict[str, object] = {}
            attributes: dict[str, object] = {}
            for name, value in row.items():
                if not name or value in (None, ""):
                    continue
                if name.startswith(CSV_ATTRIBUTE_PREFIX):
                    attributes[name.removeprefix(CSV_ATTRIBUTE_PREFIX)] = value
                elif name in ("category", "tags"):
                    body[name] = value.split(CSV_LIST_SEPARATOR)
                elif name in ("available", "deleted"):
                    body[name] = _CSV_FLAGS.get(value.strip().lower(), value)
                elif name == "ts" and value.lstrip("-").isdigit():
                    body[name] = int(value)
                elif name == "price":
                    body[name] = value
                    with contextlib.suppress(ValueError):
                        body[name] = float(value)
                else:
                    body[name] = value
            if attributes:
                body["attributes"] = attributes
            yield line_number, item_from_fields(body)


def taobao_items(path: Path) -> Iterator[tuple[int, ItemChange | Rejection]]:
    """The catalogue a Taobao UserBehavior file (`user_id,item_id,category_id,behavior,
    timestamp`) implies: a record for each item at its first event, with that row's
    category, and a newer one at any later row that names another category. The
    file's rows are read by the event reader and judged by the catalogue contract,
    so a bad row is reported with its reason. Holds one category per item in memory."""
    category_of: dict[str, str] = {}
    for line_number, event in read_events(path, EventFileFormat.TAOBAO):
        if isinstance(event, Rejection):
            yield line_number, event
            continue
        category = (event.context or {})["category_id"]
        if category_of.get(event.item_id) != category:
            fields = {"item_id": event.item_id, "ts": event.ts_ms, "category": category}
            record = item_from_fields(fields)
            if not isinstance(record, Rejection):
                category_of[event.item_id] = str(category)
            yield line_number, record
