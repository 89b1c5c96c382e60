"""Fault drills 1-5, 7, 8 and 9 outside pytest, on a dev stack of their own; each drill's
figures go to bench/reports/drills.{md,json}, or, for a run of some drills only
(`--only`), to a report of their own (drills-7-8.{md,json}). The drills are the ones the
tests run (bench/scenarios/); here nothing is asserted, everything is written down."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.common import REPORTS, ScratchStack, machine, machine_line, write_json
from bench.scenarios.cluster_failover import cluster_failover_drill
from bench.scenarios.ingest import kill_drill, poison_drill, redis_full_drill, redis_restart_drill
from bench.scenarios.models import serving_models
from bench.scenarios.redis_freeze import redis_freeze_drill
from bench.scenarios.serving import bad_bundle_drill, server_kill_drill
from bench.scenarios.workers import assert_state_is_exact, pipeline_names
from devtools.devstack import free_port
from streamrec.client import RetryPolicy
from streamrec.events import Event
from streamrec.settings import Settings

console = Console(stderr=True)
COMMAND = "flock /tmp/streamrec-bench.lock streamrec bench drills"
DRILLS = (
    "1_worker_kill", "2_redis_restart", "3_poison_flood", "4_bad_bundles", "5_server_kill",
    "7_redis_full", "8_redis_freeze", "9_cluster_failover",
)  # fmt: skip
FREEZE_MARGIN_MS = 50.0  # drill 8's goal: every answer within the budget plus this


def chosen(only: Sequence[str]) -> list[str]:
    """The drills `only` names (by number, by name or both: "7", "redis_full",
    "7_redis_full"), in drill order; every drill when `only` is empty."""
    if not only:
        return list(DRILLS)
    unknown = [name for name in only if not any(name in (d, *d.split("_", 1)) for d in DRILLS)]
    if unknown:
        raise SystemExit(f"no drill {', '.join(unknown)}; the drills are {', '.join(DRILLS)}")
    return [d for d in DRILLS if any(name in (d, *d.split("_", 1)) for name in only)]


def report_name(names: Sequence[str]) -> str:
    """`drills` for the full set; a partial run never overwrites the report the docs cite."""
    if list(names) == list(DRILLS):
        return "drills"
    return "drills-" + "-".join(name.split("_", 1)[0] for name in names)


def run(only: Sequence[str] = ()) -> dict[str, Any]:
    names = chosen(only)
    name = report_name(names)
    load_before = os.getloadavg()
    drills: dict[str, Any] = {}
    with ScratchStack("drills") as base:
        available = _drills(base, base.home)
        for drill_name in names:
            console.print(f"drill {drill_name} ...")
            started = time.monotonic()
            figures = available[drill_name]()
            figures["seconds"] = round(time.monotonic() - started, 1)
            drills[drill_name] = figures
            console.print(f"  {figures}")
    command = COMMAND + "".join(f" --only {n.split('_', 1)[0]}" for n in names if only)
    report: dict[str, Any] = {
        "drills": drills,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": command,
        "machine": machine(),
    }
    write_json(name, report)
    _write_markdown(name, report)
    return report


def _drills(base: Settings, home: Path) -> dict[str, Callable[[], dict[str, Any]]]:
    databases = iter(range(1, 16))

    def settings(name: str, **overrides: object) -> Settings:
        fields: dict[str, object] = {
            "redis_url": f"{base.redis_url.rsplit('/', 1)[0]}/{next(databases)}",
            **pipeline_names(name),
            "input_partitions": 2,
            "archive_dir": home / "archive" / name,
            "worker_web_port": free_port(),
            "redis_retry_max_s": 0.5,
            **overrides,
        }
        return base.model_copy(update=fields)

    def serving(name: str) -> Settings:
        return settings(
            name, registry=home / name / "registry", serve_port=free_port(), registry_poll_s=0.1
        )

    def workdir(name: str) -> Path:
        path = home / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def one_kill() -> dict[str, Any]:
        first = settings("kill", commit_interval_s=2.0, batch_max_events=200)
        return asdict(kill_drill(first, workdir("kill")))

    def redis_restart() -> dict[str, Any]:
        return asdict(redis_restart_drill(settings("redis"), workdir("redis")))

    def poison() -> dict[str, Any]:
        return asdict(
            poison_drill(settings("poison"), workdir("poison"), rate=1_000.0, measure_normal=True)
        )

    def bad_bundles() -> dict[str, Any]:
        return asdict(bad_bundle_drill(serving("bundles"), serving_models(), workdir("bundles")))

    def server_kill() -> dict[str, Any]:
        figures = asdict(server_kill_drill(serving("kill-server"), serving_models(), workdir("ks")))
        without = server_kill_drill(
            serving("kill-server-no-retry"), serving_models(), workdir("ks-no-retry"),
            retry=RetryPolicy(attempts=1),
        )  # fmt: skip
        figures["without_retry"] = without.load
        return figures

    def redis_full() -> dict[str, Any]:
        # The test's check, as a figure: the state against the one the events imply.
        differences: list[str] = []

        def check_state(checked: Settings, events: list[Event]) -> None:
            try:
                assert_state_is_exact(checked, events)
            except AssertionError as difference:
                differences.append(str(difference).splitlines()[0] if str(difference) else "")

        figures = asdict(redis_full_drill(settings("oom"), workdir("oom"), check_state))
        figures["state_exact"] = not differences
        figures["state_difference"] = differences[0] if differences else ""
        return figures

    def redis_freeze() -> dict[str, Any]:
        drill = redis_freeze_drill(serving("redis-freeze"), serving_models(), workdir("freeze"))
        limit_ms = drill.budget_ms + FREEZE_MARGIN_MS
        figures = drill.figures()
        figures["limit_ms"] = limit_ms
        figures["frozen"]["within_limit"] = sum(
            a.latency_s * 1000 <= limit_ms for a in drill.during_freeze()
        )
        figures["statuses"] = dict(Counter(str(a.status) for a in drill.answers))
        return figures

    def cluster_failover() -> dict[str, Any]:
        # A Redis timeout the shared cores do not trip: the 503s are the failover's.
        failover = serving("cluster-failover").model_copy(
            update={"serve_redis_timeout_ms": 1000.0, "serve_budget_ms": 60_000.0}
        )
        drill = cluster_failover_drill(failover, serving_models(), workdir("cluster-failover"))
        return drill.figures()

    return {
        "1_worker_kill": one_kill,
        "2_redis_restart": redis_restart,
        "3_poison_flood": poison,
        "4_bad_bundles": bad_bundles,
        "5_server_kill": server_kill,
        "7_redis_full": redis_full,
        "8_redis_freeze": redis_freeze,
        "9_cluster_failover": cluster_failover,
    }


def _write_markdown(name: str, r: dict[str, Any]) -> None:
    m, d = r["machine"], r["drills"]
    partial = name != "drills"
    lines = [
        "# Fault drills"
        + (f" ({', '.join(n.split('_', 1)[0] for n in d)} only)" if partial else ""),
        "",
        f"Command: `{r['command']}` (the same drills as `pytest tests/drills`, with figures "
        "instead of assertions). Real Tansu broker, real Redis, real `streamrec worker` and "
        "`streamrec serve` processes on one machine.",
        f"{machine_line(m)} Load average (1, 5, 15 min) before "
        f"{r['load_average_before']}, after {r['load_average_after']}: the cores are shared "
        "with other work, so rates and latencies are lower bounds of what the code does.",
        "",
    ]
    if partial:
        lines += ["A run of some drills only; the full set is `bench/reports/drills.md`.", ""]
    if any(n in d for n in ("1_worker_kill", "2_redis_restart", "3_poison_flood", "7_redis_full")):
        lines += _ingestion(d)
    if any(n in d for n in ("4_bad_bundles", "5_server_kill")):
        lines += _serving(d)
    if "8_redis_freeze" in d:
        lines += _redis_freeze(d["8_redis_freeze"])
    if "9_cluster_failover" in d:
        lines += _cluster_failover(d["9_cluster_failover"])
    if not partial:
        lines += [
            "Drill 6 (10 minutes at a fixed rate with a swap every minute) is "
            "`streamrec bench soak`: `bench/reports/soak.md`.",
            "",
        ]
    lines += [
        "Wall time per drill (s): "
        + ", ".join(f"{n.split('_', 1)[0]}: {f['seconds']}" for n, f in d.items())
        + ".",
        "",
    ]
    (REPORTS / f"{name}.md").write_text("\n".join(lines), encoding="utf-8")


def _ingestion(d: dict[str, Any]) -> list[str]:
    numbers = ", ".join(n.split("_", 1)[0] for n in d if n[0] in "1237")
    rows, notes = [], []
    if kill := d.get("1_worker_kill"):
        rows.append(
            f"| 1 SIGKILL the worker at 4k, 9k, 14k of a paced 20k replay | {kill['events']:,} "
            f"| {kill['lost']} | {kill['duplicated']} | {kill['dlq']} | "
            f"{', '.join(map(str, kill['recovery_s']))} | 0 lost, 0 duplicated |"
        )
        notes.append(
            "Recovery: drill 1, from the SIGKILL to the first event applied by the next "
            "worker (process start, group join and rebalance included); drills 2 and 7, "
            "from Redis going down (or full) to the state moving again (the outage included)."
        )
    if restart := d.get("2_redis_restart"):
        rows.append(
            f"| 2 restart Redis (AOF) after 2k of a paced 8k replay, down "
            f"{restart['outage_s']} s | {restart['events']:,} | {restart['lost']} | "
            f"{restart['duplicated']} | {restart['dlq']} | "
            f"{', '.join(map(str, restart['recovery_s']))} | 0 lost, 0 duplicated |"
        )
        notes.append(
            f"Drill 2's worker retried {restart['write_retries']:.0f} batch write(s) and "
            "acknowledged nothing meanwhile."
        )
    if poison := d.get("3_poison_flood"):
        rows.append(
            f"| 3 {poison['bad']:,} bad messages at full speed into a stream of "
            f"{poison['events']:,} good ones at {poison['offered_rate']:,.0f} /s | "
            f"{poison['events']:,} | {poison['lost']} | {poison['duplicated']} | "
            f"{poison['dlq']:,} | — | every bad one in the DLQ |"
        )
        notes.append(_poison_note(poison))
    if full := d.get("7_redis_full"):
        rows.append(
            f"| 7 Redis full (`maxmemory` below its use, `noeviction`) after 1.5k of a paced "
            f"6k replay, for {full['outage_s']} s | {full['events']:,} | {full['lost']} | "
            f"{full['duplicated']} | {full['dlq']} | "
            f"{', '.join(map(str, full['recovery_s']))} | 0 lost, empty DLQ, exact state |"
        )
        exact = "yes" if full["state_exact"] else f"**no** ({full['state_difference']})"
        notes.append(
            f"Drill 7: final state exact (every user's recent events, purchases, counts "
            f"against those the events imply): {exact}. While Redis was full "
            f"`streamrec_state_write_blocked` said `{full['blocked_reason']}`, the worker's "
            f"`/readyz` answered {full['ready_status_during']}, "
            f"{full['applied_during_outage']} events were applied; the worker retried "
            f"{full['write_retries']:.0f} batch write(s)."
        )
    return [
        f"## Ingestion (drill{'s' if ',' in numbers else ''} {numbers})",
        "",
        "| drill | events | lost | duplicated | DLQ | recovery s | goal |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *[line for note in notes for line in (note, "")],
    ]


def _poison_note(poison: dict[str, Any]) -> str:
    ratio = poison["good_rate_during_flood"] / poison["normal_rate"]
    return (
        f"Drill 3: DLQ reasons match what was sent: "
        f"{poison['dlq_reasons'] == poison['expected_reasons']} "
        f"({len(poison['dlq_reasons'])} reasons). Good events were applied at "
        f"**{poison['good_rate_during_flood']:,} /s during the flood** against "
        f"**{poison['normal_rate']:,} /s alone**: {ratio:.0%} of the normal rate (goal ≥ 80%). "
        "Good events arrive as a live stream at "
        f"{poison['offered_rate']:,.0f} /s, on one worker: first "
        f"{poison['events']:,} alone, then {poison['events']:,} others with the flood sent "
        "at full speed once a fifth of them are in. Rates are timed between 5% and 95% of the "
        "good events applied, from the worker's counter. Everything (the flood and the rest "
        f"of the good stream) was counted {poison['flood_seconds']} s after the flood began. "
        "Earlier runs loaded all messages before starting the worker, which then read them "
        "flat out: good events went at 34% of their flat-out rate, because a bad message "
        "costs the saturated worker about what a good one does (three messages per good "
        "event); that is the worker's capacity, not what a flood does to a live stream. "
        f"Rejected by the worker: {poison['rejected']:,.0f}."
    )


def _serving(d: dict[str, Any]) -> list[str]:
    def load_row(name: str, load: dict[str, Any]) -> str:
        return (
            f"| {name} | {load['requests']:,} | {load['errors']} | {load['p50_ms']} | "
            f"{load['p99_ms']} | {load['max_ms']} |"
        )

    lines = [
        "## Serving (drills 4-5)",
        "",
        "Load: 4 closed-loop askers through `AsyncRecommenderClient` (retries as shipped: "
        "3 tries, jittered backoff, failover), `/recommend` k = 10 for 20 users with clicks; "
        "the tiny test model (16-dim encoder, 1-layer ranker), so latencies say little about "
        "serving speed (`bench/reports/serve.md` does that).",
        "",
        "| run | requests | errors | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    bundles, servers = d.get("4_bad_bundles"), d.get("5_server_kill")
    if bundles:
        lines.append(load_row("4 three bad bundles made current under load", bundles["load"]))
    if servers:
        lines.append(load_row("5 two servers, one SIGKILLed", servers["load"]))
        lines.append(
            load_row("5 the same without retries (attempts = 1)", servers["without_retry"])
        )
    lines.append("")
    if bundles:
        lines += [
            f"Drill 4: served version before, during and after: {bundles['versions_seen']} "
            f"(the good one, {bundles['served_version']}); `streamrec_model_swaps_total` "
            f"refused = {bundles['refused_metric']:.0f}, swapped = "
            f"{bundles['swapped_metric']:.0f} (the first load); refusals in the server log: "
            f"{bundles['refusals_logged']}. Why each was refused:",
            "",
            *[f"- {kind}: {reason}" for kind, reason in bundles["refused"].items()],
            "",
        ]
    if servers:
        lines += [
            f"Drill 5: after the SIGKILL the survivor answered "
            f"{servers['survivor_requests_after_kill']:.0f} requests in 5 s. Without retries "
            f"the client saw {servers['without_retry']['errors']} error(s): the requests in "
            "flight on the killed server and those sent to it before its cooldown.",
            "",
        ]
    return lines


def _redis_freeze(freeze: dict[str, Any]) -> list[str]:
    def row(name: str, answers: dict[str, Any]) -> str:
        statuses = ", ".join(f"{kind}: {n:,}" for kind, n in sorted(answers["by_status"].items()))
        return (
            f"| {name} | {answers['answers']:,} | {answers['p50_ms']} | {answers['p99_ms']} | "
            f"{answers['max_ms']} | {statuses} |"
        )

    frozen = freeze["frozen"]
    statuses = ", ".join(f"{status}: {n:,}" for status, n in sorted(freeze["statuses"].items()))
    return [
        "## Serving with Redis frozen (drill 8)",
        "",
        f"One `streamrec serve` under closed-loop load (2 askers over httpx: `/recommend` "
        "k = 10 for users with history and for newcomers, `/score` of 3 items) while its "
        f"Redis is stopped (SIGSTOP) for {freeze['frozen_s']} s, 2 s of load before and "
        f"after; latency budget {freeze['budget_ms']:.0f} ms, goal: every answer sent during "
        f"the freeze within {freeze['limit_ms']:.0f} ms, only 200 and 503. Latencies are "
        "client-side, on the tiny test model.",
        "",
        "| answers sent | answers | p50 ms | p99 ms | max ms | status and kind |",
        "|---|---|---|---|---|---|",
        row("during the freeze", frozen),
        row("the whole run", freeze["all"]),
        "",
        f"Drill 8: **{frozen['within_limit']:,} of {frozen['answers']:,} answers during the "
        f"freeze within {freeze['limit_ms']:.0f} ms** (max {frozen['max_ms']} ms). "
        f"Statuses over the whole run: {statuses}.",
        "",
    ]


def _cluster_failover(f: dict[str, Any]) -> list[str]:
    window = f["503_window_s"]
    return [
        "## A Redis Cluster primary killed (drill 9)",
        "",
        "A local Redis Cluster of 3 primaries with a replica each (`cluster-node-timeout` "
        f"2 s); a {f['events']:,}-event Taobao replay through one `streamrec worker` while "
        "one `streamrec serve` on the same cluster answers closed-loop load (2 askers, "
        "Redis timeout 1 s); one primary SIGKILLed after "
        f"{f['applied_at_kill']:,} events were applied.",
        "",
        f"Drill 9: the replica took over **{f['promoted_s']} s** after the kill; the worker "
        f"applied events again after {f['state_moved_s']} s ({f['write_retries']:.0f} write "
        f"retries); **lost {f['lost']}, doubled {f['duplicated']}**; users and items whose "
        f"state differs from the same replay on a single Redis: {f['users_differing']} and "
        f"{f['items_differing']}. The server: **{f['503s']} answers 503** of "
        f"{f['answers']:,}"
        + (f", sent {window[0]} to {window[1]} s after the kill" if window else "")
        + f"; {f['failover_answers']} answers to requests sent during the failover "
        f"({f['failover_by_status']}), the slowest {f['failover_max_ms']} ms.",
        "",
    ]
