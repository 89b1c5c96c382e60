"""`streamrec produce | worker | state | forget | topics`: events in, state out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from streamrec.errors import InputFormatError
from streamrec.event_files import FileFormat
from streamrec.events import Rejection
from streamrec.redact import redacted
from streamrec.settings import Settings

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command()(produce)
    app.command()(worker)
    app.command()(state)
    app.command()(forget)
    app.command()(topics)


def produce(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL, CSV or Taobao CSV"),
    fmt: FileFormat | None = typer.Option(None, "--format", help="Default: detected."),
    rate: float | None = typer.Option(None, "--rate", min=1, help="Events per second."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Stop after this many rows."),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first bad row (exit 1) instead of skipping it."
    ),
) -> None:
    """Replay an event file into Kafka, keyed by user, clicks and purchases to their topics."""
    from itertools import islice

    from streamrec.event_files import detect_format, read_events
    from streamrec.producer import EventProducer, replay
    from streamrec.topics import ensure_topics

    settings = Settings()
    fmt = fmt or detect_format(path)
    ensure_topics(settings)
    if limit is None:
        with open(path, "rb") as fh:
            total = sum(1 for _ in fh)
    else:
        total = limit
    rows = read_events(path, fmt, strict=strict)
    if limit:
        rows = islice(rows, limit)
    try:
        with (
            Progress(
                TextColumn("[bold]produce"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), console=console,
            ) as progress,
            EventProducer(settings) as producer,
        ):  # fmt: skip
            task = progress.add_task("produce", total=total)
            report = replay(producer, rows, rate, lambda n: progress.advance(task, n))
    except InputFormatError as exc:  # --strict: the first bad row, named by read_events
        typer.secho(str(exc), err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    console.print(
        f"sent {report.sent} events in {report.seconds:.1f} s "
        f"({report.sent / max(report.seconds, 1e-9):,.0f}/s) to {settings.kafka_bootstrap}"
    )
    exit_on_bad_rows(report.skipped)


def exit_on_bad_rows(skipped: list[tuple[int, Rejection]]) -> None:
    """Name the first bad rows with their reasons; exit 1 if there were any. Every
    command that reads an event file ends this way (docs/events.md)."""
    for line_number, rejection in skipped[:20]:
        console.print(f"[red]line {line_number}[/red]: {rejection.reason}: {rejection.detail}")
    if skipped:
        console.print(f"[red]{len(skipped)} bad rows skipped[/red]")
        raise typer.Exit(1)


def worker(
    web_port: int | None = typer.Option(None, help="Port for /metrics (default: settings)."),
    noop: bool = typer.Option(False, help="Consume and count only (benchmark floor)."),
) -> None:
    """Run the Faust worker: events from Kafka folded into Redis state."""
    from stream.worker import run_worker

    settings = Settings() if web_port is None else Settings(worker_web_port=web_port)
    run_worker(settings, noop=noop)


def state(user_id: str = typer.Argument(..., help="The user whose state to print.")) -> None:
    """Print a user's state as JSON: recent events, purchased items, counts by type."""
    from redis.exceptions import RedisError

    from streamrec.errors import StateError
    from streamrec.state import StateStore

    settings = Settings()

    async def read() -> dict[str, object]:
        store = StateStore(settings)
        try:
            user = await store.read_user(user_id)
        except RedisError as exc:
            raise StateError(f"cannot read Redis at {redacted(settings.redis_url)}: {exc}") from exc
        finally:
            await store.close()
        if not user.recent_events and not user.counts_by_type:
            raise StateError(
                f"no state for user {user_id!r} in Redis at {redacted(settings.redis_url)}: "
                f"never seen there, or idle longer than STREAMREC_USER_TTL_S "
                f"({settings.user_ttl_s} s)"
            )
        return user.to_json_dict()

    typer.echo(orjson.dumps(asyncio.run(read()), option=orjson.OPT_INDENT_2).decode())


def forget(user_id: str = typer.Argument(..., help="The user to forget.")) -> None:
    """Forget a user: every Redis key, archived event and recommendation record of
    theirs goes, after the events they sent before (docs/operations.md)."""
    from streamrec.forget import send_forget

    settings = Settings()
    request = send_forget(settings, user_id)
    reached = ", ".join(f"{h.topic}[{h.partition}]@{h.offset}" for h in request.horizon)
    console.print(
        f"requested on {settings.topic_users_forget}: the worker forgets the user once "
        f"their events up to {reached} are applied"
    )


def topics() -> None:
    """Create every topic with its configured partition count."""
    from streamrec.topics import ensure_topics

    created = ensure_topics(Settings())
    console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")
