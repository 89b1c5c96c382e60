"""Replay files: our JSONL and CSV, the Taobao format, and `streamrec produce` on a real broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from bench.scenarios.data import TAOBAO
from bench.scenarios.workers import read_topic
from streamrec.event_files import FileFormat, bad_row_message, detect_format, read_events
from streamrec.events import Event, EventType, Rejection, RejectReason
from streamrec.settings import Settings


def test_taobao_rows_map_to_our_types_with_line_number_ids() -> None:
    rows = list(read_events(TAOBAO, FileFormat.TAOBAO))[:2000]
    assert detect_format(TAOBAO) is FileFormat.TAOBAO
    events = [row for _, row in rows]
    assert all(isinstance(e, Event) for e in events)
    first = events[0]
    assert isinstance(first, Event)
    assert (first.event_id, first.user_id, first.item_id, first.type) == (
        "taobao-1", "543462", "1715", EventType.CLICK,
    )  # fmt: skip
    assert first.ts_ms == 1_511_658_000_000
    assert first.context == {"category_id": "1464116"}
    kinds = {e.type for e in events if isinstance(e, Event)}
    assert kinds == {EventType.CLICK, EventType.PURCHASE, EventType.ADD_TO_CART, EventType.FAVORITE}


def test_taobao_bad_rows_are_rejections_with_reasons(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("1,2,3,pv,1511658000\n1,2,3,like,1511658000\n1,2,3,pv,noon\n1,2,pv\n")
    reasons = [r.reason if isinstance(r, Rejection) else None for _, r in read_events(path)]
    assert reasons == [
        None, RejectReason.UNKNOWN_TYPE, RejectReason.BAD_TIMESTAMP, RejectReason.MALFORMED_JSON,
    ]  # fmt: skip


def test_csv_and_jsonl_read_the_same_events(tmp_path: Path) -> None:
    csv_path = tmp_path / "e.csv"
    csv_path.write_text(
        "event_id,user_id,item_id,type,ts,price\n"
        "a,u1,i1,click,1700000000000,\n"
        "b,u1,i2,purchase,2023-11-14T22:13:21Z,9.5\n"
        "c,u2,i3,purchase,1700000000000,lots\n"
    )
    jsonl_path = tmp_path / "e.jsonl"
    jsonl_path.write_bytes(
        b'{"event_id":"a","user_id":"u1","item_id":"i1","type":"click","ts":1700000000000}\n'
        b'{"event_id":"b","user_id":"u1","item_id":"i2","type":"purchase",'
        b'"ts":"2023-11-14T22:13:21Z","price":9.5}\n'
        b"\n"
        b"not json\n"
    )
    from_csv = [r for _, r in read_events(csv_path)]
    from_jsonl = [r for _, r in read_events(jsonl_path)]
    assert from_csv[:2] == from_jsonl[:2]
    assert isinstance(from_csv[2], Rejection) and from_csv[2].reason is RejectReason.WRONG_TYPE
    assert isinstance(from_jsonl[2], Rejection)
    assert from_jsonl[2].reason is RejectReason.MALFORMED_JSON


@pytest.mark.integration
def test_produce_command_sends_valid_rows_and_reports_bad_ones(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("produce")
    path = tmp_path / "events.jsonl"
    good = [
        {
            "event_id": f"e{n}",
            "user_id": f"u{n % 3}",
            "item_id": "i",
            "type": kind,
            "ts": 1_700_000_000_000,
        }
        for n, kind in enumerate(["click", "purchase", "view", "click"])
    ]
    path.write_bytes(b"\n".join(orjson.dumps(g) for g in good) + b'\n{"event_id": 1}\n')
    env = settings.child_env()
    done = subprocess.run(
        [sys.executable, "-m", "cli", "produce", str(path), "--rate", "1000"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "sent 4 events" in done.stderr
    assert "line 5" in done.stderr and "missing_field" in done.stderr
    clicks = read_topic(settings, settings.topic_clicks, expected=3)
    purchases = read_topic(settings, settings.topic_purchases, expected=1)
    assert sorted(orjson.loads(r.value)["event_id"] for r in clicks) == ["e0", "e2", "e3"]
    assert [r.key for r in purchases] == [b"u1"]


@pytest.mark.integration
def test_produce_strict_stops_at_the_first_bad_row_in_one_line(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("produce-strict")
    path = tmp_path / "events.json"  # JSONL, as the suffix says
    good = [
        {
            "event_id": f"e{n}",
            "user_id": "u",
            "item_id": "i",
            "type": "click",
            "ts": 1_700_000_000_000,
        }
        for n in range(4)
    ]
    rows = [orjson.dumps(g) for g in good]
    rows.insert(2, b'{"event_id": "x", "user_id": "u", "item_id": "i", "type": "like", "ts": 1}')
    path.write_bytes(b"\n".join(rows) + b"\n")
    (rejection,) = [row for _, row in read_events(path) if isinstance(row, Rejection)]
    done = subprocess.run(
        [sys.executable, "-m", "cli", "produce", str(path), "--strict"],
        env=settings.child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == bad_row_message(path, 3, rejection)
    assert rejection.reason is RejectReason.UNKNOWN_TYPE
    clicks = read_topic(settings, settings.topic_clicks, expected=2)
    assert sorted(orjson.loads(r.value)["event_id"] for r in clicks) == ["e0", "e1"]


@pytest.mark.integration
def test_produce_rejects_a_csv_without_event_id_as_train_does(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("produce-no-ids")
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,type,ts\nu,a,click,1000\nu,b,click,2000\n")
    done = subprocess.run(
        [sys.executable, "-m", "cli", "produce", str(path)],
        env=settings.child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "sent 0 events" in done.stderr and "2 bad rows skipped" in done.stderr
    assert "line 2: missing_field: required field 'event_id' is missing" in done.stderr
    strict = subprocess.run(
        [sys.executable, "-m", "cli", "produce", str(path), "--strict"],
        env=settings.child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert strict.returncode == 1
    assert strict.stderr.strip().splitlines()[-1] == (
        f"{path}:2: missing_field: required field 'event_id' is missing"
    )
