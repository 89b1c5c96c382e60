"""Catalogue files: JSONL and CSV records, the catalogue a Taobao file implies, and
`streamrec items load` on a real broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from itertools import islice
from pathlib import Path

import orjson

from bench.scenarios.data import TAOBAO
from bench.scenarios.workers import read_topic
from streamrec.events import Rejection, RejectReason
from streamrec.item_files import ItemFileFormat, detect_item_format, read_items, taobao_items
from streamrec.items import ItemDelete, ItemRecord
from streamrec.settings import Settings
from streamrec.topics import ensure_topics

JSONL = (
    b'{"item_id": "i1", "ts": 1700000000000, "category": "shoes", "title": "Trail runner",'
    b' "price": 59.5, "tags": ["red"], "attributes": {"brand": "acme", "size": 42}}\n'
    b'{"item_id": "i2", "ts": "2023-11-14T22:13:21Z", "available": false, "category": ["a", "b"]}\n'
    b"\n"
    b'{"item_id": "i3", "ts": 1700000000000, "deleted": true}\n'
    b'{"item_id": "i4", "ts": 1700000000000, "price": -1}\n'
    b"not json\n"
)
CSV = (
    "item_id,ts,available,category,title,price,tags,deleted,attributes.brand\n"
    "i1,1700000000000,true,shoes,Trail runner,59.5,red,,acme\n"
    "i2,2023-11-14T22:13:21Z,0,a|b,,,,,\n"
    "i3,1700000000000,,,,,,1,\n"
    "i4,1700000000000,,,,-1,,,\n"
    "i5,1700000000000,perhaps,,,,,,\n"
)
I1 = ItemRecord(
    "i1", 1_700_000_000_000, categories=("shoes",), title="Trail runner", price=59.5,
    tags=("red",), attributes={"brand": "acme", "size": 42},
)  # fmt: skip
I2 = ItemRecord("i2", 1_700_000_001_000, available=False, categories=("a", "b"))
I3 = ItemDelete("i3", 1_700_000_000_000)


def reasons(rows: list[tuple[int, object]]) -> list[tuple[int, object]]:
    return [(n, r.reason if isinstance(r, Rejection) else r) for n, r in rows]


def test_jsonl_records_and_bad_lines_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_bytes(JSONL)
    assert detect_item_format(path) is ItemFileFormat.JSONL
    assert reasons(list(read_items(path))) == [
        (1, I1), (2, I2), (4, I3), (5, RejectReason.BAD_VALUE), (6, RejectReason.MALFORMED_JSON),
    ]  # fmt: skip


def test_csv_records_read_as_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(CSV)
    assert detect_item_format(path) is ItemFileFormat.CSV
    i1_from_csv = replace(I1, attributes={"brand": "acme"})  # CSV attributes are text
    assert reasons(list(read_items(path))) == [
        (2, i1_from_csv), (3, I2), (4, I3), (5, RejectReason.BAD_VALUE),
        (6, RejectReason.WRONG_TYPE),
    ]  # fmt: skip


def test_a_taobao_file_implies_each_items_category_at_its_first_event() -> None:
    rows = list(islice(taobao_items(TAOBAO), 3))
    assert rows == [
        (1, ItemRecord("1715", 1_511_658_000_000, categories=("1464116",))),
        (2, ItemRecord("2244074", 1_511_658_000_000, categories=("1575622",))),
        (3, ItemRecord("3611281", 1_511_658_000_000, categories=("965809",))),
    ]
    # The first 2,000 rows: one record per distinct item, dated by its first row.
    lines = TAOBAO.read_text().splitlines()[:2000]
    first_seen: dict[str, tuple[int, str]] = {}
    for line in lines:
        _, item, category, _, seconds = line.split(",")
        first_seen.setdefault(item, (int(seconds) * 1000, category))
    derived = [r for n, r in islice(taobao_items(TAOBAO), 10_000) if n <= 2000]
    assert {r.item_id: (r.ts_ms, r.categories) for r in derived if isinstance(r, ItemRecord)} == {
        item: (ts, (category,)) for item, (ts, category) in first_seen.items()
    }
    assert len(derived) == len(first_seen)


def test_a_taobao_item_that_changes_category_gets_a_newer_record(tmp_path: Path) -> None:
    path = tmp_path / "taobao.csv"
    path.write_text(
        "1,10,100,pv,1511658000\n2,10,100,buy,1511658001\n3,11,100,pv,1511658002\n"
        "1,10,200,pv,1511658003\n1,12,,pv,1511658004\n1,13,300,like,1511658005\n"
    )
    assert reasons(list(taobao_items(path))) == [
        (1, ItemRecord("10", 1_511_658_000_000, categories=("100",))),
        (3, ItemRecord("11", 1_511_658_002_000, categories=("100",))),
        (4, ItemRecord("10", 1_511_658_003_000, categories=("200",))),
        (5, RejectReason.EMPTY_FIELD),
        (6, RejectReason.UNKNOWN_TYPE),
    ]


def _load(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "items", "load", *args],
        env=settings.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_items_load_produces_each_record_keyed_by_item_and_reports_bad_rows(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("items-load")
    ensure_topics(settings)
    path = tmp_path / "items.jsonl"
    path.write_bytes(JSONL)
    done = _load(settings, str(path))
    assert done.returncode == 1, done.stderr  # bad rows make the exit code 1
    assert "sent 3 item records (1 deletes)" in done.stderr
    assert "line 5" in done.stderr and "bad_value" in done.stderr
    assert "line 6" in done.stderr and "malformed_json" in done.stderr
    assert "2 bad rows skipped" in done.stderr
    records = read_topic(settings, settings.topic_items, expected=3)
    assert sorted((r.key, r.value) for r in records) == sorted(
        (change.item_id.encode(), change.to_json()) for change in (I1, I2, I3)
    )
    assert orjson.loads(next(r.value for r in records if r.key == b"i3")) == {
        "item_id": "i3", "ts": 1_700_000_000_000, "deleted": True,
    }  # fmt: skip


def test_items_load_from_taobao_sends_one_record_per_item(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("items-taobao")
    ensure_topics(settings)
    path = tmp_path / "taobao.csv"
    path.write_text("\n".join(TAOBAO.read_text().splitlines()[:12]) + "\n")
    done = _load(settings, "--from-taobao", str(path))
    assert done.returncode == 0, done.stderr
    # Twelve rows, twelve items (rows 10 and 12 share a category, not an item).
    assert "sent 12 item records (0 deletes)" in done.stderr
    records = read_topic(settings, settings.topic_items, expected=12)
    rows = [line.split(",") for line in path.read_text().split()]
    assert sorted((r.key, r.value) for r in records) == sorted(
        (item.encode(), ItemRecord(item, int(seconds) * 1000, categories=(category,)).to_json())
        for _, item, category, _, seconds in rows
    )
