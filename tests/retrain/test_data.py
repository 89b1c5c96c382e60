import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.scenarios.data import DATA, TAOBAO, YOOCHOOSE
from retrain.data import load_sequences, load_srgnn, read_sequences
from retrain.holdout import next_item_cases, split_recent
from streamrec.errors import InputFormatError
from streamrec.event_files import TAOBAO_BEHAVIOR
from streamrec.events import EventType, RejectReason


def test_srgnn_files_match_the_published_counts() -> None:
    split = load_srgnn(YOOCHOOSE)
    assert len(split.train) == 116_167
    assert sum(len(s.item_ids) - 1 for s in split.train) == 369_859
    assert len(split.test.targets) == 55_898


def test_taobao_behaviours_map_to_event_types(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        TAOBAO.read_text(encoding="utf-8").splitlines()[0] + "\n" + "1,9,5,buy,20\n1,8,5,cart,10\n"
    )
    (first, *_) = load_sequences(path, "taobao")
    by_item = dict(zip(first.item_ids, first.types, strict=True))
    assert by_item["9"] == EventType.PURCHASE and by_item["8"] == EventType.ADD_TO_CART
    assert list(first.ts_ms) == sorted(first.ts_ms)


def test_sessions_jsonl_and_csv_formats(tmp_path: Path) -> None:
    sessions = load_sequences(
        DATA / "yoochoose_sessions" / "yoochoose-clicks-100k_test.txt", "sessions"
    )
    assert sessions and all(len(s.item_ids) == len(s.ts_ms) for s in sessions)
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text(
        '{"event_id":"1","user_id":"u","item_id":"a","type":"purchase","ts":2000}\n'
        '{"event_id":"2","user_id":"u","item_id":"b","type":"click","ts":1000}\n'
    )
    read = read_sequences(jsonl)
    assert read.fmt == "jsonl"
    (user,) = read.sequences
    assert user.item_ids == ("b", "a") and user.types == (EventType.CLICK, EventType.PURCHASE)
    csv_path = tmp_path / "e.csv"
    csv_path.write_text("event_id,user_id,item_id,type,ts\n1,u,a,click,1000\n")
    assert read_sequences(csv_path).fmt == "csv"
    assert load_sequences(csv_path, "csv")[0].item_ids == ("a",)


def test_a_folder_is_srgnn_and_an_unknown_format_is_named(tmp_path: Path) -> None:
    assert read_sequences(YOOCHOOSE).fmt == "srgnn"
    with pytest.raises(InputFormatError, match=r"format must be one of jsonl, csv, .*srgnn"):
        read_sequences(TAOBAO, "parquet")


def test_a_bad_row_is_skipped_and_counted_or_stops_a_strict_read(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("1,2,3,pv,5\n1,2,3,teleport,5\n")
    read = read_sequences(path, "taobao")
    assert [s.item_ids for s in read.sequences] == [("2",)]
    ((line_number, rejection),) = read.skipped
    assert line_number == 2 and rejection.reason is RejectReason.UNKNOWN_TYPE
    assert "pv/buy/cart/fav" in rejection.detail
    with pytest.raises(InputFormatError, match=r"bad\.csv:2: unknown_type: .*pv/buy/cart/fav"):
        read_sequences(path, "taobao", strict=True)


def test_holdout_takes_the_most_recent_sequences_and_every_prefix() -> None:
    sequences = load_srgnn(YOOCHOOSE).train[:100]
    older, recent = split_recent(sequences, 0.1)
    assert recent == sequences[90:] and older == sequences[:90]
    cases = next_item_cases(recent)
    assert len(cases.targets) == sum(len(s.item_ids) - 1 for s in recent)
    assert cases.prefixes[0].item_ids == recent[0].item_ids[:1]


@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 50),
            st.integers(0, 50),
            st.sampled_from(["pv", "buy", "cart", "fav", "click", ""]),
            st.integers(0, 2_000_000_000),
        ),
        max_size=30,
    )
)
def test_taobao_loader_keeps_every_good_event_and_names_each_bad_line(
    rows: list[tuple[int, int, str, int]],
) -> None:
    bad_lines = [n for n, (_, _, b, _) in enumerate(rows, start=1) if b not in TAOBAO_BEHAVIOR]
    good = [row for row in rows if row[2] in TAOBAO_BEHAVIOR]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.csv"
        path.write_text("".join(f"{u},{i},1,{b},{ts}\n" for u, i, b, ts in rows))
        read = read_sequences(path, "taobao")
        if bad_lines:
            with pytest.raises(InputFormatError, match=rf"events\.csv:{bad_lines[0]}: "):
                read_sequences(path, "taobao", strict=True)
    assert [line_number for line_number, _ in read.skipped] == bad_lines
    sequences = read.sequences
    assert sum(len(s.item_ids) for s in sequences) == len(good)
    assert {s.user_id for s in sequences} == {str(u) for u, *_ in good}
    for sequence in sequences:
        assert list(sequence.ts_ms) == sorted(sequence.ts_ms)
