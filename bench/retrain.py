"""Warm retrain on a million events: one `streamrec retrain` cycle
(retrain.cycle.run_cycle: read the archive window, warm-start from the serving
version, train both models, gate against the serving version, publish) timed
end to end. Writes bench/reports/retrain.{md,json} (`--quick`: retrain-quick.*).

The new events are the yoochoose1_64 training sessions (486,026 clicks), taken
again as new sessions until the count is reached; the serving version they
warm-start from was trained on its first 20,000 sessions.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from bench.common import REPORTS, machine, machine_line, write_json
from bench.scenarios.data import YOOCHOOSE as DATA
from bench.scenarios.data import shared
from retrain.data import UserSequence, load_srgnn
from streamrec import registry
from streamrec.archive import ArchivedEvent, ArchiveWriter
from streamrec.events import Event
from streamrec.settings import Settings

if TYPE_CHECKING:
    from retrain.cycle import CycleResult

console = Console(stderr=True)
PARENT_SESSIONS = 20_000


def _cycle(settings: Settings) -> tuple[CycleResult, int]:
    """One cycle and the peak RSS (KB) of the process that ran it."""
    from retrain.cycle import run_cycle

    result = run_cycle(settings, progress=True)
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_bench(events: int = 1_000_000, quick: bool = False) -> Path:
    events = 100_000 if quick else events
    load_before = os.getloadavg()
    home = Path(tempfile.mkdtemp(prefix="streamrec-bench-retrain-"))
    settings = Settings(home=home, registry=home / "registry", archive_dir=home / "archive")
    try:
        sessions = load_srgnn(shared(DATA)).train
        since = datetime.now(UTC) - timedelta(hours=2)
        parent = _publish_parent(settings, sessions[:PARENT_SESSIONS], since)
        written = _archive(settings, sessions, events, since)
        del sessions  # the cycle runs in a process of its own: its peak RSS is its own
        console.print(f"warm retrain on {written:,} archived events (parent {parent})")
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            result, peak_rss_kb = pool.apply(_cycle, (settings,))
        seconds = time.perf_counter() - started
        manifest = (
            registry.read_manifest(settings.registry, result.version) if result.version else None
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    report: dict[str, Any] = {
        "events": written,
        "outcome": result.outcome,
        "reason": result.reason,
        "cycle_seconds": round(seconds, 1),
        "events_per_s": round(written / seconds),
        "train_seconds": manifest.training.get("train_seconds") if manifest else None,
        "encoder_epochs": settings.retrain_epochs,
        "encoder_negatives": settings.retrain_negatives,
        "items": manifest.index.get("n_items") if manifest else None,
        "metrics": result.metrics,
        "peak_rss_mb": round(peak_rss_kb / 1024),
        "max_events": settings.retrain_max_events,
        "max_cases": settings.retrain_max_cases,
        "dropped_events": manifest.data_window.get("dropped_events") if manifest else None,
        "goal_seconds": 300,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "quick": quick,
        "command": "streamrec bench retrain" + (" --quick" if quick else ""),
        "machine": machine(),
    }
    stem = "retrain-quick" if quick else "retrain"
    write_json(stem, report)
    path = REPORTS / f"{stem}.md"
    path.write_text(_markdown(report), encoding="utf-8")
    rate = report["events_per_s"]
    console.print(f"{written:,} events: {result.outcome} in {seconds:.0f} s ({rate:,} events/s)")
    return path


def _publish_parent(settings: Settings, sessions: list[UserSequence], until: datetime) -> str:
    """The serving version: a short training on the first sessions, whose archive
    window ends where the new events begin."""
    from retrain.publish import publish_models
    from retrain.training import TrainPlan, train_models

    plan = replace(TrainPlan(), encoder=replace(TrainPlan().encoder, epochs=1))
    models = train_models(sessions, plan, progress=False)
    source = {"archive_until_ms": int(until.timestamp() * 1000), "source": str(DATA)}
    manifest = publish_models(
        models, settings.registry, plan, source, None, settings.hnsw_threshold
    )
    return manifest.version


def _archive(settings: Settings, sessions: list[UserSequence], total: int, since: datetime) -> int:
    """`total` click events, session after session (copies get new ids), as the
    stream worker archives them, arriving over the hour after `since`."""
    start_ms = int(since.timestamp() * 1000) + 1000
    writer = ArchiveWriter(settings.archive_root, "bench")
    written = 0
    try:
        for copy in itertools.count():
            for sequence in sessions:
                batch = []
                for step, item in enumerate(sequence.item_ids[: total - written]):
                    at = start_ms + written * 3_600_000 // total
                    event = Event(
                        f"c{copy}-{sequence.user_id}-{step}", f"{sequence.user_id}-c{copy}",
                        item, sequence.types[step], at,
                    )  # fmt: skip
                    batch.append(ArchivedEvent(event, "bench.clicks", 0, written, at))
                    written += 1
                writer.append(batch)
                if written >= total:
                    return written
    finally:
        writer.close()
    return written


def _markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    gate = r["metrics"]
    return "\n".join(
        [
            f"# Warm retrain on {r['events']:,} events",
            "",
            f"Command: `{r['command']}`. {machine_line(m)} "
            f"Load average before/after: {r['load_average']['before'][0]:.1f} / "
            f"{r['load_average']['after'][0]:.1f} (> 2: other work shared the cores).",
            "",
            "One `streamrec retrain` cycle, timed end to end: read the archive window, "
            "warm-start from the serving version (vocabulary grown, old rows kept), train "
            f"the encoder ({r['encoder_epochs']} epochs, `STREAMREC_RETRAIN_EPOCHS`; "
            f"{_softmax(r['encoder_negatives'])}, `STREAMREC_RETRAIN_NEGATIVES`) and the ranker, "
            "measure new and serving versions on the same held-out slice, export to "
            "ONNX with the parity check, build the FAISS index, publish. The events are the "
            "yoochoose1_64 training sessions taken again as new sessions until the count "
            f"is reached; the serving version was trained on its first {PARENT_SESSIONS:,}.",
            "",
            "Peak RSS is the cycle's own process (spawned; the bench's setup is not in "
            f"it), with `STREAMREC_RETRAIN_MAX_EVENTS` = {r['max_events']:,} and "
            f"`STREAMREC_RETRAIN_MAX_CASES` = {r['max_cases']:,} (the ranker's and the "
            "gate's cases, a seeded sample beyond it), which bound it.",
            "",
            "| events | outcome | cycle s | events/s | training s | items | peak RSS MB | goal |",
            "|---|---|---|---|---|---|---|---|",
            f"| {r['events']:,} | {r['outcome']} | {r['cycle_seconds']} | "
            f"{r['events_per_s']:,} | {r['train_seconds']} | {r['items']} | "
            f"{r['peak_rss_mb']:,} | ≤ {r['goal_seconds']} s |",
            "",
            f"Gate ({r['reason']}): {gate}.",
            "",
        ]
    )


def _softmax(negatives: int) -> str:
    return f"sampled softmax, {negatives:,} negatives" if negatives else "full softmax"
