"""The event archive: hourly segments by arrival, each event once on read, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from streamrec.archive import (
    ArchivedEvent,
    ArchiveWriter,
    compact,
    prune,
    read_archive,
    read_forgotten,
    record_forget,
    segments,
    user_digest,
)
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


def raw_lines(root: Path) -> list[bytes]:
    return [
        line for _, folder in segments(root) for path in folder.glob("*.jsonl")
        for line in path.read_bytes().splitlines()
    ]  # fmt: skip


def test_a_forgotten_user_is_hidden_at_once_and_gone_from_disk_after_compaction(
    tmp_path: Path,
) -> None:
    writer = ArchiveWriter(tmp_path, writer_id="w")
    writer.append([record(n, T0 + timedelta(minutes=n * 20)) for n in range(6)])  # u0 u1 u2
    forgotten_at = int((T0 + timedelta(hours=3)).timestamp() * 1000)
    # A crash right after the forget list was written, before any rewrite: no read
    # returns the user, though the rows are still on disk.
    record_forget(writer, "u1", forgotten_at)
    assert [r.event.user_id for r in read_archive(tmp_path)] == ["u0", "u2", "u0", "u2"]
    assert any(b'"user_id":"u1"' in line for line in raw_lines(tmp_path))
    report = compact(writer, now=T0 + timedelta(hours=3))
    assert (report.rows_removed, report.files_rewritten) == (2, 2)
    assert not any(b'"user_id":"u1"' in line for line in raw_lines(tmp_path))
    assert not any(b"u1" in path.read_bytes() for path in (tmp_path / "forgotten").iterdir())
    # The writer goes on appending to the rewritten file; a new event of the user
    # (after the forget) is kept.
    writer.append([record(7, T0 + timedelta(hours=3, minutes=1))])
    assert [r.event.event_id for r in read_archive(tmp_path)][-1] == "e7"
    # Idempotent: a second forget and pass change nothing else.
    record_forget(writer, "u1", forgotten_at)
    assert compact(writer, now=T0 + timedelta(hours=4)).rows_removed == 0
    assert read_forgotten(tmp_path).count == 2
    writer.close()


def test_another_writers_file_of_the_current_hour_waits_for_a_later_pass(tmp_path: Path) -> None:
    other = ArchiveWriter(tmp_path, writer_id="other")
    other.append([record(1, T0)])  # u1, still being written by "other"
    writer = ArchiveWriter(tmp_path, writer_id="me")
    record_forget(writer, "u1", int(T0.timestamp() * 1000) + 1)
    report = compact(writer, now=T0 + timedelta(minutes=30))
    assert (report.rows_removed, report.files_deferred) == (0, 1)
    assert list(read_archive(tmp_path)) == []
    assert compact(writer, now=T0 + timedelta(hours=1, minutes=2)).rows_removed == 1
    # Only the named partitions' files, when given.
    third = ArchiveWriter(tmp_path, writer_id="third")
    third.append([record(3, T0)])  # u0, clicks partition 1
    record_forget(writer, "u0", int(T0.timestamp() * 1000) + 1)
    later = T0 + timedelta(hours=2)
    assert compact(writer, partitions=[("clicks", 0)], now=later).rows_removed == 0
    assert compact(writer, partitions=[("clicks", 1)], now=later).rows_removed == 1
    for each in (other, writer, third):
        each.close()


def test_retention_drops_forget_entries_older_than_every_segment_left(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, writer_id="w")
    record_forget(writer, "u1", int(T0.timestamp() * 1000))
    record_forget(writer, "u2", int((T0 + timedelta(hours=5)).timestamp() * 1000))
    prune(tmp_path, retention_s=2 * 3600, now=T0 + timedelta(hours=5), writer=writer)
    assert read_forgotten(tmp_path).count == 1
    writer.close()


def test_a_targeted_pass_reads_only_files_naming_its_users_and_counts_per_user(
    tmp_path: Path,
) -> None:
    def row(n: int, user: str, partition: int) -> ArchivedEvent:
        event = Event(f"e{n}", user, "i", EventType.CLICK, 1_000 + n)
        return ArchivedEvent(event, "clicks", partition, n, int(T0.timestamp() * 1000))

    writer = ArchiveWriter(tmp_path, writer_id="w")
    writer.append([row(0, "u1", 0), row(1, "u2", 1), row(2, "u2", 1), row(3, "u0", 1)])
    at = int(T0.timestamp() * 1000)
    record_forget(writer, "u1", at)
    record_forget(writer, "u2", at)
    report = compact(writer, user_ids=["u2"], now=T0 + timedelta(hours=2))
    assert report.rows_by_user == {user_digest("u2"): 2} and report.files_rewritten == 1
    # u1's file was not read: its row stays on disk until a pass names u1, hidden.
    assert b'"user_id":"u1"' in b"".join(line for line in raw_lines(tmp_path))
    assert [r.event.user_id for r in read_archive(tmp_path)] == ["u0"]
    assert compact(writer, user_ids=["u1"], now=T0 + timedelta(hours=2)).rows_removed == 1
    writer.close()
