"""`streamrec demo`: simulated shoppers through the whole pipeline, watched live.

It trains a model on the first part of a synthetic sample, starts a worker and a
model server, feeds that history through Kafka at full speed, asks for a few
users' recommendations, replays the rest of the sample live while their state
and recommendations change, and asks again.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from devtools.processes import ServiceProcess
from devtools.scrape import counter_total, histogram_buckets, histogram_quantile
from streamrec.client import Recommendations, RecommenderClient
from streamrec.errors import StreamrecError
from streamrec.events import Event, EventType
from streamrec.items import ItemRecord
from streamrec.redact import redacted
from streamrec.settings import Settings
from streamrec.state import StateStore

console = Console()
BAD_MESSAGES = (b"{not json", b'{"event_id": "x"}', b'{"type": "like"}')
HISTORY_SHARE = 0.7  # of the sample: trained on; the rest is replayed live
SHOWN = 5  # recommendations shown per user


def register(app: typer.Typer) -> None:
    app.command()(demo)
    app.command()(sample)


DEMO_NAME = "streamrec-demo"


def demo_settings(settings: Settings) -> Settings:
    """The demo's own pipeline beside the user's: its registry and archive under
    <home>/demo, its topics and consumer group, and the last database of the Redis
    server (flushed at the start of each demo), so that a demo never makes its model
    current for the user's servers nor writes into the user's state or archive. On a
    Redis Cluster (one database) only the dev stack's own cluster, flushed."""
    import redis

    from streamrec.topics import pipeline_names

    folder = settings.home / "demo"
    own = settings.model_copy(
        update={
            "registry": folder / "registry",
            "archive_dir": folder / "archive",
            **pipeline_names(DEMO_NAME),
        }
    )
    if settings.redis_is_cluster:
        return _on_own_cluster(own)
    url = urlsplit(settings.redis_url)
    mine = int(url.path.strip("/") or 0)
    client = redis.Redis.from_url(settings.redis_url)
    configured: object = 16  # a managed Redis may refuse CONFIG
    try:
        configured = client.config_get("databases").get("databases", 16)
    except redis.RedisError:
        pass
    finally:
        client.close()
    database = int(str(configured)) - 1
    if database == mine:
        raise StreamrecError(
            f"the demo uses the last Redis database ({database}), which is yours "
            f"({redacted(settings.redis_url)}): point STREAMREC_REDIS_URL at another one"
        )
    demo_url = urlunsplit(url._replace(path=f"/{database}"))
    redis.Redis.from_url(demo_url).flushdb()
    return own.model_copy(update={"redis_url": demo_url})


def _on_own_cluster(settings: Settings) -> Settings:
    """A Redis Cluster has one database: the demo flushes the dev stack's own cluster
    (`streamrec dev up --cluster`) and refuses any other, which holds someone's state."""
    import redis

    from devtools.devstack import DevStack

    stack = DevStack(settings.home).status()
    if not stack.redis_cluster_pids or stack.redis_url != settings.redis_url:
        raise StreamrecError(
            "a Redis Cluster has one database, and the demo flushes it: it runs on the dev "
            f"stack's own cluster (`streamrec dev up --cluster`), not on "
            f"{redacted(settings.redis_url)}"
        )
    client = redis.RedisCluster.from_url(settings.redis_node_url)
    try:
        client.flushdb()  # every primary
    finally:
        client.close()
    return settings


def sample(
    out: Path = typer.Option(..., "--out", help="Write the events here (JSONL)."),
    items: Path | None = typer.Option(
        None, "--items", help="Also write the shop's catalogue records here (JSONL)."
    ),
    events: int = typer.Option(4000, min=100, help="How many events to simulate."),
    users: int = typer.Option(150, min=1, help="How many simulated shoppers."),
) -> None:
    """Write a synthetic sample to try streamrec with: simulated shoppers' events (the
    demo's simulator, every event marked `"source": "synthetic"`) and, with --items,
    their shop's catalogue. Feeds `train`, `produce` and `items load` as they are."""
    from devtools.simulator import simulate, simulate_catalogue

    written = list(simulate(n_users=users, n_events=events))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"".join(e.to_json() + b"\n" for e in written))
        catalogue = simulate_catalogue(until_ms=written[-1].ts_ms) if items else []
        if items is not None:
            items.parent.mkdir(parents=True, exist_ok=True)
            items.write_bytes(b"".join(r.to_json() + b"\n" for r in catalogue))
    except OSError as exc:
        raise StreamrecError(f"cannot write the sample: {exc}") from None
    shoppers = len({e.user_id for e in written})
    console.print(
        f"{out}: {len(written)} synthetic events of {shoppers} shoppers on "
        f"{len({e.item_id for e in written})} items"
        + (f"; {items}: {len(catalogue)} catalogue records" if items is not None else "")
    )


def demo(
    events: int = typer.Option(4000, min=100, help="How many synthetic events to simulate."),
    rate: float = typer.Option(300.0, min=1, help="Live replay, events per second."),
) -> None:
    """Train on simulated history, serve, replay live events; show state and
    recommendations change."""
    from devtools.devstack import DevStack, free_port
    from devtools.simulator import START_MS, simulate, simulate_catalogue
    from streamrec.topics import ensure_topics

    settings = Settings()
    stack = DevStack(settings.home)
    if not stack.status().broker_alive:
        console.print("starting the dev stack (`streamrec dev up`)...")
        stack.up(external_redis_url=settings.redis_url if settings.redis_url_explicit else "")
        settings = Settings()
    settings = demo_settings(settings).model_copy(
        update={"worker_web_port": free_port(), "serve_port": free_port()}
    )
    ensure_topics(settings)
    console.print(
        f"[bold]the demo's own pipeline[/bold]: registry {settings.registry}, Redis "
        f"{redacted(settings.redis_url)}, topics {settings.app_id}.*, archive "
        f"{settings.archive_root} (yours are untouched)"
    )

    run_id = time.strftime("%H%M%S-")
    sample = list(simulate(n_users=150, n_events=events, run_id=run_id))
    cut = int(len(sample) * HISTORY_SHARE)
    history, live = sample[:cut], sample[cut:]
    catalogue = simulate_catalogue(until_ms=sample[-1].ts_ms)
    folder = settings.home / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    history_path = folder / "history.jsonl"
    history_path.write_bytes(b"\n".join(e.to_json() for e in history) + b"\n")
    (folder / "live.jsonl").write_bytes(b"\n".join(e.to_json() for e in live) + b"\n")
    console.print(
        f"[bold]sample[/bold]: {len(sample)} synthetic events from simulated shoppers; "
        f"{len(history)} to train on, {len(live)} replayed live ({folder})"
    )
    arrivals = {r.item_id for r in catalogue} - {
        r.item_id for r in catalogue if r.ts_ms == START_MS
    }
    console.print(
        f"[bold]catalogue[/bold]: {len({r.item_id for r in catalogue})} items with titles and "
        f"prices, {sum(not r.available for r in catalogue)} stock-outs, {len(arrivals)} new "
        "arrivals, sent to the items topic with the events in time order (docs/catalogue.md)"
    )

    console.print("[bold]training[/bold] the retriever and the ranker on the history...")
    trained = subprocess.run(
        [sys.executable, "-m", "cli", "train", "--data", str(history_path),
         "--epochs", "3", "--dim", "32", "--quiet"],
        env=settings.child_env(), capture_output=True, text=True,
    )  # fmt: skip
    if trained.returncode != 0:
        raise StreamrecError(f"training failed:\n{trained.stdout}{trained.stderr}")
    console.print(trained.stdout.strip().splitlines()[-1])

    logs = settings.home / "logs"
    worker = ServiceProcess(
        settings, ["worker"], logs / "demo-worker.log", settings.worker_web_port
    )
    server = ServiceProcess(settings, ["serve"], logs / "demo-server.log", settings.serve_port)
    console.print("starting a Faust worker and a model server...")
    worker.start()
    server.start()
    try:
        worker.wait_ready()
        server.wait_ready()
        console.print(f"feeding the {len(history)} history events through Kafka...")
        history_end_ms = history[-1].ts_ms
        _replay(settings, history, rate=None, bad=False, catalogue=catalogue)
        deadline = time.monotonic() + 120
        while counter_total(worker.metrics_text(), "streamrec_events") < len(history):
            if time.monotonic() > deadline:
                raise StreamrecError("the worker did not take the history within 120 s")
            time.sleep(0.2)
        watched = [user for user, _ in Counter(e.user_id for e in live).most_common(3)]
        url = f"http://127.0.0.1:{settings.serve_port}"
        with RecommenderClient(url) as client:
            before = {user: client.recommend(user, k=SHOWN) for user in watched}
            later = [r for r in catalogue if r.ts_ms > history_end_ms]
            sender = threading.Thread(
                target=_replay, args=(settings, live, rate, True, later), daemon=True
            )
            console.print(f"replaying {len(live)} live events at {rate:.0f}/s...")
            sender.start()
            expected = len(history) + len(live) + len(BAD_MESSAGES)
            asyncio.run(_watch(settings, worker, client, watched, sender, expected))
            after = {user: client.recommend(user, k=SHOWN) for user in watched}
        _print_before_after(watched, before, after, live)
    finally:
        server.stop()
        worker.stop()
    console.print(
        f"\n`STREAMREC_REDIS_URL={redacted(settings.redis_url)} streamrec state {watched[0]}` "
        "prints that user's whole state as JSON.\n"
        f"While they ran, the worker's Prometheus metrics were on :{settings.worker_web_port}"
        f"/metrics and the server's on :{settings.serve_port}/metrics; `streamrec worker` and "
        "`streamrec serve` use :6066 and :8000.\n"
        "Stop the broker and Redis with `streamrec dev down`."
    )


def _replay(
    settings: Settings,
    sample: list[Event],
    rate: float | None,
    bad: bool = True,
    catalogue: Sequence[ItemRecord] = (),
) -> None:
    """Send the events, each catalogue record (in time order) just before the first
    event after it."""
    from streamrec.producer import EventProducer

    with EventProducer(settings) as producer:
        started = time.perf_counter()
        records = iter(catalogue)
        record = next(records, None)
        for n, event in enumerate(sample):
            pause = started + n / rate - time.perf_counter() if rate else 0.0
            if pause > 0:
                time.sleep(pause)
            while record is not None and record.ts_ms <= event.ts_ms:
                producer.send_raw(settings.topic_items, record.item_id.encode(), record.to_json())
                record = next(records, None)
            producer.send(event)
        if bad:
            # Bad messages land in the DLQ, counted, never lost.
            for message in BAD_MESSAGES:
                producer.send_raw(settings.topic_clicks, b"demo", message)


async def _watch(
    settings: Settings,
    worker: ServiceProcess,
    client: RecommenderClient,
    watched: list[str],
    sender: threading.Thread,
    total: int,
) -> None:
    store = StateStore(settings)
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                text = worker.metrics_text()
                live.update(await _table(store, client, text, watched))
                if not sender.is_alive() and counter_total(text, "streamrec_events") >= total:
                    break
                await asyncio.sleep(0.25)
            live.update(await _table(store, client, worker.metrics_text(), watched))
    finally:
        await store.close()


async def _table(
    store: StateStore, client: RecommenderClient, metrics_text: str, watched: list[str]
) -> Table:
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
    table.add_column("last three (c=click a=add_to_cart $=purchase)")
    table.add_column("bought", justify="right")
    table.add_column(f"recommended now (top {SHOWN})")
    marks = {"purchase": "$", "add_to_cart": "a"}
    for user_id in watched:
        state = await store.read_user(user_id)
        last = " ".join(
            escape(f"{e.item_id}[{marks.get(e.type.value, 'c')}]") for e in state.recent_events[-3:]
        )
        now = client.recommend(user_id, k=SHOWN)
        table.add_row(
            user_id,
            str(sum(state.counts_by_type.values())),
            last,
            str(len(state.purchased)),
            " ".join(now.item_ids) + (f" ({now.fallback})" if now.fallback else ""),
        )
    return table


def _print_before_after(
    watched: list[str],
    before: dict[str, Recommendations],
    after: dict[str, Recommendations],
    live: list[Event],
) -> None:
    table = Table(title="Recommendations before and after each user's live events")
    table.add_column("user")
    table.add_column("before")
    table.add_column("after")
    table.add_column("bought live (never recommended again)")
    for user_id in watched:
        was, now = before[user_id], after[user_id]
        bought = sorted(
            {e.item_id for e in live if e.user_id == user_id and e.type is EventType.PURCHASE}
        )
        table.add_row(
            user_id,
            _describe(was),
            _describe(now),
            " ".join(bought) or "-",
        )
    console.print(table)


def _describe(answer: Recommendations) -> str:
    note = f" ({answer.fallback})" if answer.fallback else ""
    return " ".join(answer.item_ids) + note + f"\n[dim]{answer.model_version}[/dim]"
