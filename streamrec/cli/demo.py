"""`streamrec demo`: a synthetic sample through broker -> Faust worker -> Redis, watched live."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from streamrec.events import Event
from streamrec.processes import ServiceProcess
from streamrec.scrape import counter_total, histogram_buckets, histogram_quantile
from streamrec.settings import Settings
from streamrec.state import StateStore

console = Console()
BAD_MESSAGES = (b"{not json", b'{"event_id": "x"}', b'{"type": "like"}')


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    events: int = typer.Option(3000, min=10, help="How many synthetic events to replay."),
    rate: float = typer.Option(300.0, min=1, help="Events per second."),
) -> None:
    """Replay a synthetic sample and show users' state change as events land."""
    from streamrec.devstack import DevStack, free_port
    from streamrec.simulator import simulate
    from streamrec.topics import ensure_topics

    settings = Settings()
    stack = DevStack(settings.home)
    if not stack.status().broker_alive:
        console.print("starting the dev stack (`streamrec dev up`)...")
        stack.up(external_redis_url=settings.redis_url if settings.redis_url_explicit else "")
        settings = Settings()
    settings = settings.model_copy(update={"worker_web_port": free_port()})
    ensure_topics(settings)

    sample = list(simulate(n_events=events))
    sample_path = settings.home / "demo" / "events.jsonl"
    sample_path.parent.mkdir(parents=True, exist_ok=True)
    sample_path.write_bytes(b"\n".join(e.to_json() for e in sample) + b"\n")
    watched = [user for user, _ in Counter(e.user_id for e in sample).most_common(3)]
    console.print(f"[bold]sample[/bold]: {len(sample)} synthetic events -> {sample_path}")

    log_path = settings.home / "logs" / "demo-worker.log"
    worker = ServiceProcess(settings, ["worker"], log_path, settings.worker_web_port)
    console.print("starting a Faust worker (it joins its consumer group in a few seconds)...")
    worker.start()
    try:
        worker.wait_ready()
        sender = threading.Thread(target=_replay, args=(settings, sample, rate), daemon=True)
        sender.start()
        asyncio.run(_watch(settings, worker, watched, sender, len(sample) + len(BAD_MESSAGES)))
    finally:
        worker.stop()
    console.print(
        f"\n`streamrec state {watched[0]}` prints that user's whole state as JSON.\n"
        f"The worker's Prometheus metrics were on :{settings.worker_web_port}/metrics; "
        f"`streamrec worker` serves them on :{Settings().worker_web_port}/metrics.\n"
        "Stop the broker and Redis with `streamrec dev down`."
    )


def _replay(settings: Settings, sample: list[Event], rate: float) -> None:
    from streamrec.producer import EventProducer

    with EventProducer(settings) as producer:
        started = time.perf_counter()
        for n, event in enumerate(sample):
            pause = started + n / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            producer.send(event)
        # Bad messages land in the DLQ, counted, never lost.
        for bad in BAD_MESSAGES:
            producer.send_raw(settings.topic_clicks, b"demo", bad)


async def _watch(
    settings: Settings,
    worker: ServiceProcess,
    watched: list[str],
    sender: threading.Thread,
    total: int,
) -> None:
    store = StateStore(settings)
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                text = worker.metrics_text()
                live.update(await _table(store, text, watched))
                if not sender.is_alive() and counter_total(text, "streamrec_events") >= total:
                    break
                await asyncio.sleep(0.25)
            live.update(await _table(store, worker.metrics_text(), watched))
    finally:
        await store.close()


async def _table(store: StateStore, metrics_text: str, watched: list[str]) -> Table:
    accepted = counter_total(metrics_text, "streamrec_events", outcome="accepted")
    rejected = counter_total(metrics_text, "streamrec_dlq")
    buckets = histogram_buckets(metrics_text, "streamrec_event_to_state_seconds")
    p99_ms = histogram_quantile(0.99, buckets) * 1000
    table = Table(
        title=f"applied {accepted:,.0f} · to DLQ {rejected:,.0f} · "
        f"event-to-state p99 {p99_ms:,.1f} ms"
    )
    table.add_column("user")
    table.add_column("events", justify="right")
    table.add_column("last five (c=click a=add_to_cart $=purchase)")
    table.add_column("purchased", justify="right")
    for user_id in watched:
        state = await store.read_user(user_id)
        marks = {"purchase": "$", "add_to_cart": "a"}
        last = " ".join(
            escape(f"{e.item_id}[{marks.get(e.type.value, 'c')}]") for e in state.recent_events[-5:]
        )
        table.add_row(
            user_id, str(sum(state.counts_by_type.values())), last, str(len(state.purchased))
        )
    return table
