"""Fault drills 1-5 outside pytest, on a dev stack of their own; each drill's figures go
to bench/reports/drills.{md,json}. The drills are the ones the tests run
(tests/drills/*_scenarios.py); here nothing is asserted, everything is written down."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.common import REPORTS, ScratchStack, machine, machine_line, tests_importable, write_json
from streamrec.client import RetryPolicy
from streamrec.devstack import free_port
from streamrec.settings import Settings

console = Console(stderr=True)
COMMAND = "flock /tmp/streamrec-bench.lock streamrec bench drills"


def run() -> dict[str, Any]:
    load_before = os.getloadavg()
    drills: dict[str, Any] = {}
    with ScratchStack("drills") as base:
        for name, drill in _drills(base, base.home).items():
            console.print(f"drill {name} ...")
            started = time.monotonic()
            figures = drill()
            figures["seconds"] = round(time.monotonic() - started, 1)
            drills[name] = figures
            console.print(f"  {figures}")
    report: dict[str, Any] = {
        "drills": drills,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": COMMAND,
        "machine": machine(),
    }
    write_json("drills", report)
    _write_markdown(report)
    return report


def _drills(base: Settings, home: Path) -> dict[str, Callable[[], dict[str, Any]]]:
    tests_importable()
    from tests.conftest import pipeline_names
    from tests.drills.ingest_scenarios import kill_drill, poison_drill, redis_restart_drill
    from tests.drills.serving_scenarios import bad_bundle_drill, server_kill_drill
    from tests.retrain.fixtures import serving_models

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

    return {
        "1_worker_kill": one_kill,
        "2_redis_restart": redis_restart,
        "3_poison_flood": poison,
        "4_bad_bundles": bad_bundles,
        "5_server_kill": server_kill,
    }


def _write_markdown(r: dict[str, Any]) -> None:
    m, d = r["machine"], r["drills"]
    kill, restart, poison = d["1_worker_kill"], d["2_redis_restart"], d["3_poison_flood"]
    bundles, servers = d["4_bad_bundles"], d["5_server_kill"]
    ratio = poison["good_rate_during_flood"] / poison["normal_rate"]

    def load_row(name: str, load: dict[str, Any]) -> str:
        return (
            f"| {name} | {load['requests']:,} | {load['errors']} | {load['p50_ms']} | "
            f"{load['p99_ms']} | {load['max_ms']} |"
        )

    lines = [
        "# Fault drills",
        "",
        f"Command: `{r['command']}` (the same drills as `pytest tests/drills`, with figures "
        "instead of assertions). Real Tansu broker, real Redis, real `streamrec worker` and "
        "`streamrec serve` processes on one machine.",
        f"{machine_line(m)} Load average (1, 5, 15 min) before "
        f"{r['load_average_before']}, after {r['load_average_after']}: the cores are shared "
        "with other work, so rates and latencies are lower bounds of what the code does.",
        "",
        "## Ingestion (drills 1-3)",
        "",
        "| drill | events | lost | duplicated | DLQ | recovery s | goal |",
        "|---|---|---|---|---|---|---|",
        f"| 1 SIGKILL the worker at 4k, 9k, 14k of a paced 20k replay | {kill['events']:,} | "
        f"{kill['lost']} | {kill['duplicated']} | {kill['dlq']} | "
        f"{', '.join(map(str, kill['recovery_s']))} | 0 lost, 0 duplicated |",
        f"| 2 restart Redis (AOF) after 2k of a paced 8k replay, down {restart['outage_s']} s | "
        f"{restart['events']:,} | {restart['lost']} | {restart['duplicated']} | "
        f"{restart['dlq']} | {', '.join(map(str, restart['recovery_s']))} | 0 lost, "
        "0 duplicated |",
        f"| 3 {poison['bad']:,} bad messages at full speed into a stream of "
        f"{poison['events']:,} good ones at {poison['offered_rate']:,.0f} /s | "
        f"{poison['events']:,} | {poison['lost']} | {poison['duplicated']} | {poison['dlq']:,} "
        f"| — | every bad one in the DLQ |",
        "",
        "Recovery: drill 1, from the SIGKILL to the first event applied by the next worker "
        "(process start, group join and rebalance "
        "included); drill 2, from Redis going "
        f"down to the state moving again (the outage included). Drill 2's worker retried "
        f"{restart['write_retries']:.0f} batch write(s) and acknowledged nothing meanwhile.",
        "",
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
        f"Rejected by the worker: {poison['rejected']:,.0f}.",
        "",
        "## Serving (drills 4-5)",
        "",
        "Load: 4 closed-loop askers through `AsyncRecommenderClient` (retries as shipped: "
        "3 tries, jittered backoff, failover), `/recommend` k = 10 for 20 users with clicks; "
        "the tiny test model (16-dim encoder, 1-layer ranker), so latencies say little about "
        "serving speed (`bench/reports/serve.md` does that).",
        "",
        "| run | requests | errors | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
        load_row("4 three bad bundles made current under load", bundles["load"]),
        load_row("5 two servers, one SIGKILLed", servers["load"]),
        load_row("5 the same without retries (attempts = 1)", servers["without_retry"]),
        "",
        f"Drill 4: served version before, during and after: {bundles['versions_seen']} "
        f"(the good one, {bundles['served_version']}); `streamrec_model_swaps_total` "
        f"refused = {bundles['refused_metric']:.0f}, swapped = {bundles['swapped_metric']:.0f} "
        f"(the first load); refusals in the server log: {bundles['refusals_logged']}. Why each "
        "was refused:",
        "",
        *[f"- {kind}: {reason}" for kind, reason in bundles["refused"].items()],
        "",
        f"Drill 5: after the SIGKILL the survivor answered "
        f"{servers['survivor_requests_after_kill']:.0f} requests in 5 s. Without retries the "
        f"client saw {servers['without_retry']['errors']} error(s): the requests in flight on "
        "the killed server and those sent to it before its cooldown.",
        "",
        "Drill 6 (10 minutes at a fixed rate with a swap every minute) is "
        "`streamrec bench soak`: `bench/reports/soak.md`.",
        "",
        "Wall time per drill (s): "
        + ", ".join(f"{name[0]}: {f['seconds']}" for name, f in d.items())
        + ".",
        "",
    ]
    (REPORTS / "drills.md").write_text("\n".join(lines), encoding="utf-8")
