"""`streamrec produce` and `streamrec train` read an event file the same way: one
format detection, the same accepted events, the same rejections, the same stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrain.data import group_by_user, read_sequences
from streamrec.errors import InputFormatError
from streamrec.event_files import bad_row_message, detect_format, read_events
from streamrec.events import Event, Rejection, RejectReason

# Each file: good rows and bad ones (format, file name, text, bad line numbers).
FILES = [
    (
        "jsonl",
        "events.jsonl",
        '{"event_id":"1","user_id":"u","item_id":"a","type":"click","ts":2000}\n'
        "\n"
        "not json\n"
        '{"event_id":"2","user_id":"v","item_id":"b","type":"purchase","ts":1000}\n'
        '{"event_id":"3","user_id":"u","item_id":"c","type":"like","ts":3000}\n',
        [3, 5],
    ),
    (
        "jsonl",
        "events.json",
        '{"event_id":"1","user_id":"u","item_id":"a","type":"click","ts":2000}\n'
        '{"event_id":"2","user_id":"u","type":"click","ts":2000}\n'
        '{"event_id":"3","user_id":"u","item_id":"b","type":"view","ts":1000}\n',
        [2],
    ),
    (
        "csv",
        "events.csv",
        "event_id,user_id,item_id,type,ts,price\n"
        "1,u,a,click,1700000000000,\n"
        "2,u,b,purchase,2023-11-14T22:13:21Z,9.5\n"
        "3,v,c,purchase,1700000000000,lots\n"
        "4,v,d,click,yesterday,\n",
        [4, 5],
    ),
    (
        "taobao",
        "behavior.csv",
        "1,2,3,pv,1511658000\n1,4,3,like,1511658000\n5,2,3,buy,1511658001\n1,2,3,pv,noon\n",
        [2, 4],
    ),
    (
        "sessions",
        "clicks.txt",
        "SessionId\tItemId\tTime\n1\t7\t1396860669.277\n1\t8\tnoon\n2\t7\t1396860886.998\n2\t9\n",
        [3, 5],
    ),
]
IDS = [name for _, name, _, _ in FILES]


@pytest.mark.parametrize(("fmt", "name", "text", "bad_lines"), FILES, ids=IDS)
def test_produce_and_train_read_the_same_events_and_rejections(
    tmp_path: Path, fmt: str, name: str, text: str, bad_lines: list[int]
) -> None:
    path = tmp_path / name
    path.write_text(text)
    produced = list(read_events(path))  # what `streamrec produce` sends or skips
    accepted = [row for _, row in produced if isinstance(row, Event)]
    rejected = [(line, row) for line, row in produced if isinstance(row, Rejection)]

    trained = read_sequences(path)

    assert detect_format(path) == trained.fmt == fmt
    assert [line for line, _ in rejected] == bad_lines
    assert trained.skipped == rejected
    assert accepted and trained.n_events == len(accepted)
    assert trained.sequences == group_by_user(
        (e.user_id, e.item_id, e.type, e.ts_ms) for e in accepted
    )


@pytest.mark.parametrize(("fmt", "name", "text", "bad_lines"), FILES, ids=IDS)
def test_strict_stops_both_at_the_first_bad_row_with_one_message(
    tmp_path: Path, fmt: str, name: str, text: str, bad_lines: list[int]
) -> None:
    path = tmp_path / name
    path.write_text(text)
    first_bad = next(row for line, row in read_events(path) if line == bad_lines[0])
    assert isinstance(first_bad, Rejection)
    message = bad_row_message(path, bad_lines[0], first_bad)
    assert message.startswith(f"{path}:{bad_lines[0]}: {first_bad.reason}: ")

    with pytest.raises(InputFormatError) as produced:
        list(read_events(path, strict=True))
    with pytest.raises(InputFormatError) as trained:
        read_sequences(path, strict=True)
    assert str(produced.value) == str(trained.value) == message


def test_a_csv_without_event_id_is_rejected_row_by_row_by_both(tmp_path: Path) -> None:
    path = tmp_path / "no_ids.csv"
    path.write_text("user_id,item_id,type,ts\nu,a,click,1000\nu,b,purchase,2000\n")
    produced = list(read_events(path))
    trained = read_sequences(path)
    assert detect_format(path) == trained.fmt == "csv"
    assert trained.sequences == []
    assert trained.skipped == produced
    assert [line for line, _ in produced] == [2, 3]
    for _, rejection in produced:
        assert isinstance(rejection, Rejection)
        assert rejection.reason is RejectReason.MISSING_FIELD
        assert "'event_id'" in rejection.detail
