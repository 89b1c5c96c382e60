"""`streamrec items load`: catalogue records from a file onto the items topic."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import typer

from cli.ingest import console, exit_on_bad_rows
from streamrec.events import Rejection
from streamrec.item_files import ItemFileFormat
from streamrec.items import ItemChange, ItemDelete
from streamrec.producer import EventProducer, ReplayReport
from streamrec.settings import Settings

items_app = typer.Typer(no_args_is_help=True, help="The catalogue: item records in.")


def register(app: typer.Typer) -> None:
    app.add_typer(items_app, name="items")


@items_app.command()
def load(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL or CSV records"),
    fmt: ItemFileFormat | None = typer.Option(None, "--format", help="Default: detected."),
    from_taobao: bool = typer.Option(
        False,
        "--from-taobao",
        help="PATH is a Taobao UserBehavior CSV: load its items' categories.",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Stop after this many rows."),
) -> None:
    """Produce item records to the items topic, keyed by item_id; print the counts."""
    from itertools import islice

    from streamrec.item_files import read_items, taobao_items
    from streamrec.topics import ensure_topics

    settings = Settings()
    ensure_topics(settings)
    rows = taobao_items(path) if from_taobao else read_items(path, fmt)
    with EventProducer(settings) as producer:
        report, deletes = send_records(producer, islice(rows, limit), settings.topic_items)
    console.print(
        f"sent {report.sent} item records ({deletes} deletes) in {report.seconds:.1f} s "
        f"to {settings.topic_items} at {settings.kafka_bootstrap}"
    )
    exit_on_bad_rows(report.skipped)


def send_records(
    producer: EventProducer, rows: Iterable[tuple[int, ItemChange | Rejection]], topic: str
) -> tuple[ReplayReport, int]:
    """Send every valid row in its canonical form, keyed by item; bad rows are reported.
    Returns the report and how many of the records sent were deletes."""
    report = ReplayReport()
    deletes = 0
    started = time.perf_counter()
    for line_number, row in rows:
        if isinstance(row, Rejection):
            report.skipped.append((line_number, row))
            continue
        producer.send_raw(topic, row.item_id.encode(), row.to_json())
        report.sent += 1
        deletes += isinstance(row, ItemDelete)
    producer.flush()
    report.seconds = time.perf_counter() - started
    return report, deletes
