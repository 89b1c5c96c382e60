"""Drill 6, the soak: open-loop load on `streamrec serve` at a fixed rate for N minutes
while a new model version is published every `swap_every_s`; errors, p50 and p99 per
minute. Writes bench/reports/soak.{md,json,png}. The load generator, users and model
are bench/serve.py's, so the figures compare with bench/reports/serve.md."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.common import REPORTS, ScratchStack, machine, machine_line, republish, write_json
from bench.serve import (
    QUICK,
    generator_name,
    open_loop,
    prepare_model,
    scrape,
    seed_users,
    serving,
)
from devtools.devstack import free_port
from devtools.scrape import counter_total
from streamrec import registry

console = Console(stderr=True)
WINDOW_S = 60.0


def run(
    minutes: int, rate: int, swap_every_s: float, servers: int = 2, users: int = 2000
) -> dict[str, Any]:
    windows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    scratch = ScratchStack("soak")
    with scratch as base:
        settings = base.model_copy(
            update={
                "registry": base.home / "registry",
                "serve_port": free_port(),
                "registry_poll_s": 0.5,
            }
        )
        model = prepare_model(settings, QUICK)
        user_ids = asyncio.run(seed_users(settings, users))
        with serving(settings, servers) as (url, _):
            swaps_before = _swaps(url)
            publisher = Swapper(settings.registry, swap_every_s)
            with publisher:
                for minute in range(1, minutes + 1):
                    result = open_loop(url, user_ids, rate, WINDOW_S)
                    result.pop("samples_ms")
                    result["minute"] = minute
                    result["swaps_published"] = publisher.published
                    windows.append(result)
                    console.print(_line(result))
            swapped = _swaps(url) - swaps_before
            refused = counter_total(scrape(url), "streamrec_model_swaps", outcome="refused")
        scratch.keep = any(w["errors"] for w in windows)  # the server's log says why
    report: dict[str, Any] = {
        "minutes": minutes,
        "rate": rate,
        "servers": servers,
        "swap_every_s": swap_every_s,
        "windows": windows,
        "requests": sum(w["sent"] for w in windows),
        "errors": sum(w["errors"] for w in windows),
        "swaps_published": publisher.published,
        "swaps_served": swapped,
        "swaps_refused": refused,
        "model": model,
        "users": len(user_ids),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": (
            f"flock /tmp/streamrec-bench.lock streamrec bench soak --minutes {minutes} "
            f"--rate {rate} --swap-every {swap_every_s:g} --servers {servers}"
        ),
        "machine": machine(),
    }
    write_json("soak", report)
    _plot(report)
    _write_markdown(report)
    return report


class Swapper:
    """Publishes a copy of the current version as a new one every `every_s`, from a thread."""

    def __init__(self, root: Path, every_s: float) -> None:
        self.root = root
        self.every_s = every_s
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Swapper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            current = registry.current_version(self.root)
            assert current is not None
            republish(self.root, current)
            self.published += 1


def _swaps(url: str) -> float:
    return counter_total(scrape(url), "streamrec_model_swaps", outcome="swapped")


def _line(w: dict[str, Any]) -> str:
    return (
        f"minute {w['minute']}: {w['sent']} sent at {w['rate']}/s, achieved "
        f"{w['achieved_rate']}/s, p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms, "
        f"errors {w['errors']}, swaps so far {w['swaps_published']}"
    )


def _plot(r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    windows = r["windows"]
    minutes = [w["minute"] for w in windows]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    # A version is published every swap_every_s from the start: between windows.
    publications = [k * r["swap_every_s"] / 60 for k in range(1, r["swaps_published"] + 1)]
    for n, at in enumerate(publications):
        ax.axvline(at + 0.5, color="0.75", linestyle=":", linewidth=1,
                   label="new version published" if n == 0 else None)  # fmt: skip
    ax.plot(minutes, [w["p50_ms"] for w in windows], marker="o", label="p50")
    ax.plot(minutes, [w["p99_ms"] for w in windows], marker="o", label="p99")
    errors = [w["minute"] for w in windows if w["errors"]]
    if errors:
        lowest = min(w["p50_ms"] for w in windows)
        ax.scatter(errors, [lowest] * len(errors), color="red", marker="x", label="errors")
    ax.set_xlabel(
        f"minute of the run (window n = minute n-1 to n; {r['servers']} server processes)"
    )
    ax.set_ylabel("latency from scheduled send (ms, log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(subs=()))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_title(f"soak: POST /recommend at {r['rate']} req/s, open loop")
    ax.set_xticks(np.array(minutes))
    ax.grid(axis="y", color="0.92")
    # Outside the axes: a legend never covers data.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(REPORTS / "soak.png", dpi=110)
    plt.close(fig)


def replot() -> None:
    """Draw soak.png again from soak.json (no new run)."""
    _plot(json.loads((REPORTS / "soak.json").read_text()))


def _write_markdown(r: dict[str, Any]) -> None:
    m, model = r["machine"], r["model"]
    lines = [
        "# Soak (drill 6)",
        "",
        f"Command: `{r['command']}`. Open-loop load ({generator_name(r['windows'])}, its own "
        f"process) on `streamrec serve --workers {r.get('servers', 1)}`: "
        f"POST /recommend k = 20 at {r['rate']} "
        f"req/s for {r['minutes']} minute(s), {r['users']:,} users with 3-19 recent events; "
        f"a copy of the served version published as a new one every {r['swap_every_s']:g} s; "
        f"model {model['version']} ({model['items']} items, {model['source']}).",
        f"{machine_line(m)} Load average (1, 5, 15 min) before "
        f"{r['load_average_before']}, after {r['load_average_after']}; generator, server and "
        "Redis share the cores with other work.",
        "",
        f"**{r['requests']:,} requests, {r['errors']} errors**; {r['swaps_published']} "
        f"versions published, {r['swaps_served']:.0f} swapped in, "
        f"{r['swaps_refused']:.0f} refused.",
        "",
        "| minute | sent | achieved req/s | p50 ms | p99 ms | errors | versions published so far |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {w['minute']} | {w['sent']:,} | {w['achieved_rate']} | {w['p50_ms']} | "
            f"{w['p99_ms']} | {w['errors']} | {w['swaps_published']} |"
            for w in r["windows"]
        ],
        "",
        "Each minute is one run of the generator; between two the load pauses for the second "
        "or so it takes to start the next generator process. Latency counts from each "
        "request's scheduled send time, so queueing shows.",
        "",
        "![p50 and p99 per minute](soak.png)",
        "",
    ]
    (REPORTS / "soak.md").write_text("\n".join(lines), encoding="utf-8")
