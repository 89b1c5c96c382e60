"""`streamrec bench apply`: what the state apply costs on a single Redis and on a
Redis Cluster, the same events through `StateStore.apply_events` (the stream
worker's write, without the broker and Faust around it).

The Taobao stream is applied batch after batch, as one worker applies one
partition's batches, to a fresh single Redis and to a fresh local cluster of three
primaries (`devtools/redis_cluster.py`), at two batch sizes. Per run: events per
second, the bench process's CPU per 1,000 events (the worker's side: packing,
routing, parsing replies), Redis's CPU per 1,000 events (every node's
`used_cpu_user + used_cpu_sys`) and script calls per batch (`INFO commandstats`).
Writes bench/reports/apply.{md,json} (`--quick`: apply-quick.*).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from bench.common import REPORTS, machine, machine_line, write_json
from bench.ingest import load_messages
from devtools.devstack import local_redis
from devtools.redis_cluster import LocalRedisCluster
from streamrec.events import Event
from streamrec.settings import Settings
from streamrec.state import StateStore

BATCH_SIZES = (100, 500)
QUICK_EVENTS = 20_000
console = Console()


def run(quick: bool = False) -> dict[str, Any]:
    events = [event for event, _ in load_messages(QUICK_EVENTS if quick else 10**9)]
    load_before = os.getloadavg()[0]
    home = Path(tempfile.mkdtemp(prefix="streamrec-bench-apply-"))
    runs: list[dict[str, Any]] = []
    try:
        for batch in BATCH_SIZES:
            with local_redis(home / f"single-{batch}") as port:
                runs.append(_measured("single Redis", [port], f"redis://127.0.0.1:{port}/0",
                                      events, batch, home))  # fmt: skip
            cluster = LocalRedisCluster(home / f"cluster-{batch}").start()
            try:
                runs.append(_measured("cluster, 3 primaries", cluster.primary_ports(),
                                      cluster.url, events, batch, home))  # fmt: skip
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    report = {
        "events": len(events),
        "source": "shared/data/taobao_stream",
        "runs": runs,
        "load_avg": (round(load_before, 2), round(os.getloadavg()[0], 2)),
        "quick": quick,
        "command": "streamrec bench apply" + (" --quick" if quick else ""),
        "machine": machine(),
    }
    stem = "apply-quick" if quick else "apply"
    write_json(stem, report)
    _write_markdown(report, stem)
    for r in runs:
        console.print(_row(r))
    return report


def _measured(
    mode: str, ports: list[int], url: str, events: list[Event], batch: int, home: Path
) -> dict[str, Any]:
    settings = Settings(home=home, redis_url=url, log_level="WARNING")
    before = [_node_figures(port) for port in ports]
    started, cpu_started = time.perf_counter(), time.process_time()
    asyncio.run(_apply(settings, events, batch))
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    after = [_node_figures(port) for port in ports]
    redis_cpu_s = sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before, strict=True))
    calls = sum(a["script_calls"] - b["script_calls"] for a, b in zip(after, before, strict=True))
    batches = -(-len(events) // batch)
    result = {
        "mode": mode,
        "batch": batch,
        "seconds": round(seconds, 2),
        "events_per_s": round(len(events) / seconds, 1),
        "client_cpu_ms_per_1k": round(cpu_s * 1e6 / len(events), 1),
        "redis_cpu_ms_per_1k": round(redis_cpu_s * 1e6 / len(events), 1),
        "script_calls_per_batch": round(calls / batches, 1),
    }
    console.print(_row(result))
    return result


async def _apply(settings: Settings, events: list[Event], batch: int) -> None:
    store = StateStore(settings)
    try:
        for start in range(0, len(events), batch):
            await store.apply_events(events[start : start + batch])
    finally:
        await store.close()


def _node_figures(port: int) -> dict[str, float]:
    with redis.Redis(port=port) as node:
        cpu = node.info("cpu")
        stats = node.info("commandstats")
    script_calls = sum(
        int(figures["calls"])
        for name, figures in stats.items()
        if name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall")
    )
    return {"cpu_s": cpu["used_cpu_user"] + cpu["used_cpu_sys"], "script_calls": script_calls}


def _row(r: dict[str, Any]) -> str:
    return (
        f"| {r['mode']} | {r['batch']} | {r['events_per_s']:,.0f} | {r['client_cpu_ms_per_1k']} "
        f"| {r['redis_cpu_ms_per_1k']} | {r['script_calls_per_batch']} |"
    )


def _write_markdown(report: dict[str, Any], stem: str) -> None:
    lines = [
        "# The state apply on a single Redis and on a Redis Cluster",
        "",
        f"Command: `{report['command']}`. {machine_line(report['machine'])} Load average "
        f"before/after: {report['load_avg'][0]} / {report['load_avg'][1]}.",
        "",
        f"{report['events']:,} events of `{report['source']}` applied batch after batch "
        "through `StateStore.apply_events` (the stream worker's write, without the broker "
        "and Faust), to a fresh single Redis and to a fresh local cluster of three "
        "primaries, all on this machine. Client CPU is the bench process's (the worker's "
        "side); Redis CPU is every node's `used_cpu_user + used_cpu_sys`; script calls "
        "from `INFO commandstats`.",
        "",
        "| mode | batch | events/s | client CPU ms / 1k events | Redis CPU ms / 1k events "
        "| script calls / batch |",
        "|---|---|---|---|---|---|",
        *(_row(r) for r in report["runs"]),
        "",
    ]
    (REPORTS / f"{stem}.md").write_text("\n".join(lines))
