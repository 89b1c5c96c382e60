"""The event archive: hourly segments by arrival, each event once on read, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from streamrec.archive import ArchivedEvent, ArchiveWriter, prune, read_archive, segments
from streamrec.events import Event, EventType

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def record(n: int, arrived: datetime, offset: int | None = None) -> ArchivedEvent:
    event = Event(f"e{n}", f"u{n % 3}", f"i{n}", EventType.CLICK, 1_000 + n, context={"k": n})
    return ArchivedEvent(
        event, "clicks", n % 2, n if offset is None else offset, int(arrived.timestamp() * 1000)
    )


def test_events_come_back_in_arrival_order_once_each(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, writer_id="a")
    first = [record(n, T0 + timedelta(minutes=n * 20)) for n in range(6)]  # spans two hours
    writer.append(first)
    # A crash replays the last two as duplicates, from another writer process.
    other = ArchiveWriter(tmp_path, writer_id="b")
    other.append([record(4, T0 + timedelta(minutes=100)), record(5, T0 + timedelta(minutes=101))])
    writer.close()
    other.close()
    assert [name.name for _, name in segments(tmp_path)] == ["20261123T10", "20261123T11"]
    back = list(read_archive(tmp_path))
    assert back == first


def test_a_window_selects_by_arrival_time(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path)
    writer.append([record(n, T0 + timedelta(minutes=n * 20)) for n in range(9)])
    writer.close()
    since, until = T0 + timedelta(minutes=40), T0 + timedelta(minutes=120)
    assert [r.event.event_id for r in read_archive(tmp_path, since, until)] == [
        "e2",
        "e3",
        "e4",
        "e5",
    ]


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, writer_id="w")
    writer.append([record(1, T0), record(2, T0)])
    writer.close()
    (path,) = (tmp_path / "20261123T10").glob("clicks.0.*.jsonl")
    with open(path, "ab") as handle:
        handle.write(b'{"topic": "clicks", "partition": 0, "off')
    assert sorted(r.event.event_id for r in read_archive(tmp_path)) == ["e1", "e2"]


def test_retention_removes_whole_old_segments(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path)
    writer.append([record(n, T0 + timedelta(hours=n)) for n in range(5)])
    writer.close()
    removed = prune(tmp_path, retention_s=2 * 3600, now=T0 + timedelta(hours=4, minutes=30))
    assert removed == ["20261123T10", "20261123T11"]
    assert [r.event.event_id for r in read_archive(tmp_path)] == ["e2", "e3", "e4"]


def test_segments_are_private_to_the_writer(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    writer = ArchiveWriter(root, writer_id="a")
    writer.append([record(1, T0)])
    writer.close()
    (folder,) = [path for _, path in segments(root)]
    (segment,) = folder.iterdir()
    assert root.stat().st_mode & 0o777 == 0o700
    assert folder.stat().st_mode & 0o777 == 0o700
    assert segment.stat().st_mode & 0o777 == 0o600
