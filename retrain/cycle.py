"""One incremental retraining cycle, what `streamrec retrain` runs.

Read the events that arrived since the serving version's window (the archive),
plus a sample of older users from the replay window; warm-start from the
serving version (the vocabulary grows, old rows are kept); train; measure the
new and the serving version on the same newest held-out slice; publish and make
current only if the new one is not worse (within a tolerance); announce it on
`model.versions`. A rejected or failed cycle leaves the registry as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from redis.exceptions import RedisError

from retrain.distributed import SINGLE, Group
from retrain.publish import load_ranker, load_warm_start, publish_models
from retrain.training import TrainPlan, evaluate_on_slice, train_models, train_plan
from retrain.window import TrainingWindow
from streamrec import experiments, registry
from streamrec.archive import read_archive, read_forgotten
from streamrec.canary import canary_experiment
from streamrec.catalogue import Catalogue
from streamrec.content import ItemContent, prices_of
from streamrec.errors import ExperimentError
from streamrec.settings import Settings

log = logging.getLogger(__name__)
Outcome = Literal["published", "rejected", "skipped"]
GATE_METRICS = ("p20", "mrr20")
GATE_MIN_CASES = 50  # a case measured on fewer is too noisy to hold a version back
CATEGORY_READ_BATCH = 1000  # items per catalogue read (one script call each)


@dataclass(frozen=True)
class CycleResult:
    outcome: Outcome
    reason: str
    parent: str | None
    version: str | None = None
    new_events: int = 0
    replay_events: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    # Published as a canary arm, not current: {experiment, run_id, percent}.
    canary: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__)


def catalogue_content(settings: Settings, item_ids: Sequence[str]) -> dict[str, ItemContent]:
    """What the catalogue says of `item_ids` (those it has a live record with any
    content for: categories, title, price, tags), read from Redis; nothing when Redis
    cannot be read (logged): the version is then trained and served without the
    category columns and the content tower (its manifest says so)."""

    async def read() -> dict[str, ItemContent]:
        catalogue = Catalogue(settings)
        try:
            found: dict[str, ItemContent] = {}
            for start in range(0, len(item_ids), CATEGORY_READ_BATCH):
                chunk = item_ids[start : start + CATEGORY_READ_BATCH]
                for item_id, record in zip(chunk, await catalogue.items(chunk), strict=True):
                    if record is not None and not record.deleted and not record.content.empty:
                        found[item_id] = record.content
            return found
        finally:
            await catalogue.close()

    try:
        return asyncio.run(read())
    except (RedisError, OSError) as exc:
        log.warning("the catalogue could not be read (%s): training without it", exc)
        return {}


def cycle_plan(settings: Settings, first: bool) -> TrainPlan:
    """What a cycle trains with: the first version, or a warm one on top of its parent."""
    encoder = TrainPlan().encoder
    return train_plan(
        settings,
        encoder=replace(
            encoder,
            epochs=settings.retrain_first_epochs if first else settings.retrain_epochs,
            negatives=settings.retrain_negatives,
        ),
        holdout_fraction=settings.retrain_holdout_fraction,
    )


def run_cycle(
    settings: Settings,
    plan: TrainPlan | None = None,
    now: datetime | None = None,
    warm_start: bool = True,
    progress: bool = False,
    canary_percent: int = 0,
    group: Group = SINGLE,
) -> CycleResult:
    """`canary_percent` > 0: a version that passes the gate is published without
    becoming current, as the `canary` arm of an experiment `canary-<version>` with
    that share of users (docs/experiments.md). While any experiment runs, such a
    cycle is skipped before training; a first version has no control and is
    published as current."""
    started = time.perf_counter()
    root = settings.registry
    until = now or datetime.now(UTC)
    parent = registry.current_version(root)
    plan = plan or cycle_plan(settings, first=parent is None)
    since = _window_end(root, parent)
    canary = canary_percent > 0 and parent is not None
    running = experiments.read(root) if canary else None
    if running is not None:
        return CycleResult(
            "skipped",
            f"experiment {running.name!r} runs; a canary cycle waits until it ends",
            parent,
            seconds=time.perf_counter() - started,
        )

    # Read once, before the window: the manifest names the last forget the read honoured.
    forgotten = read_forgotten(settings.archive_root)
    window = TrainingWindow(settings.retrain_max_events)
    window.read_new(read_archive(settings.archive_root, since, until, forgotten))
    if window.new_events < settings.retrain_min_events:
        return CycleResult(
            "skipped",
            f"{window.new_events} new events since {since}; "
            f"the minimum is {settings.retrain_min_events}",
            parent,
            new_events=window.new_events,
            seconds=time.perf_counter() - started,
        )
    if since is not None:
        window_start = since - timedelta(seconds=settings.retrain_replay_window_s)
        older = read_archive(settings.archive_root, window_start, since, forgotten)
        window.read_replay(older, settings.retrain_replay_fraction)
    sequences = window.sequences()

    parent_vocab, parent_encoder = (
        load_warm_start(root, parent) if parent and warm_start else (None, None)
    )
    content = catalogue_content(
        settings, sorted({item for sequence in sequences for item in sequence.item_ids})
    )
    categories = {item: c.categories for item, c in content.items() if c.categories}
    models = train_models(
        sequences, plan, parent_vocab, parent_encoder, progress, categories, content, group
    )
    metrics: dict[str, Any] = {"candidate": _gated(models.validation)}
    if parent is not None:
        vocab, encoder = load_warm_start(root, parent)
        # The serving version measured as it serves: with the category columns only
        # if it was trained with them.
        served_with = (
            categories if registry.read_manifest(root, parent).category_candidates else None
        )
        serving = evaluate_on_slice(
            encoder, load_ranker(root, parent), vocab, sequences, plan, served_with,
            prices_of(content),
        )  # fmt: skip
        metrics["serving"] = _gated(serving)
        failures = gate_failures(
            metrics["candidate"], metrics["serving"], settings.retrain_tolerance
        )
        if failures:
            reason = "; ".join(failures)
            log.warning("retrain rejected: %s", reason)
            return CycleResult(
                "rejected", reason, parent, None, window.new_events, window.replay_events, metrics,
                time.perf_counter() - started,
            )  # fmt: skip

    source = {
        "archive_since_ms": int(since.timestamp() * 1000) if since else None,
        "archive_until_ms": int(until.timestamp() * 1000),
        "new_events": window.new_events,
        "replay_events": window.replay_events,
        # The oldest beyond STREAMREC_RETRAIN_MAX_EVENTS, not trained on.
        "dropped_events": window.dropped,
        "offsets": window.offsets,
        # The forget horizon: every user forgotten up to here is absent from the window.
        **forgotten.to_json_dict(),
        "gate": {"metrics": GATE_METRICS, "tolerance": settings.retrain_tolerance, **metrics},
    }
    manifest = publish_models(
        models, root, plan, source, parent, settings.hnsw_threshold, make_current=not canary
    )
    reason = "not worse than the serving version" if parent else "first version"
    started_canary = None
    if canary:
        reason, started_canary = _start_canary(root, manifest.version, canary_percent)
    result = CycleResult(
        "published", reason, parent, manifest.version, window.new_events,
        window.replay_events, metrics,
        time.perf_counter() - started, started_canary,
    )  # fmt: skip
    log.info("retrain published %s (parent %s): %s", manifest.version, parent, reason)
    return result


def _start_canary(root: Any, version: str, percent: int) -> tuple[str, dict[str, Any] | None]:
    """Start `canary-<version>`; the version stays published, not current, if an
    experiment was started between the check before training and now."""
    try:
        experiment = experiments.start(root, canary_experiment(version, percent))
    except ExperimentError as exc:
        log.warning("retrain: %s published, not current, without a canary: %s", version, exc)
        return f"published, not current; no canary: {exc}", None
    return (
        f"not worse than the serving version offline; a canary for {percent}% of users",
        {"experiment": experiment.name, "run_id": experiment.run_id, "percent": percent},
    )


def _gated(evaluation: dict[str, Any]) -> dict[str, Any]:
    """What the gate compares: retriever + ranker overall and by case."""
    return {**evaluation["retriever_ranker"], "by_case": evaluation.get("by_case", {})}


def gate_failures(
    candidate: dict[str, Any], serving: dict[str, Any], tolerance: float
) -> list[str]:
    """Where the new version is worse than the serving one by more than `tolerance`
    points, on the prequential report's measures: hit@20 (P@20) and MRR@20, overall
    and for each case (`repeat`, `new_item`) both measured on at least
    `GATE_MIN_CASES` cases. A version that loses the repeats cannot pass on an
    average that new items carry. Empty: publish."""
    rows = [("all", candidate, serving)]
    for case, new_case in candidate.get("by_case", {}).items():
        old_case = serving.get("by_case", {}).get(case)
        if old_case and min(new_case["cases"], old_case["cases"]) >= GATE_MIN_CASES:
            rows.append((case, new_case, old_case))
    failures = []
    for case, new_metrics, old_metrics in rows:
        for metric in GATE_METRICS:
            if float(new_metrics[metric]) < float(old_metrics[metric]) - tolerance:
                failures.append(
                    f"{case} {metric}: new {new_metrics[metric]:.2f} < serving "
                    f"{old_metrics[metric]:.2f} - tolerance {tolerance}"
                )
    return failures


def _window_end(root: Any, parent: str | None) -> datetime | None:
    """Where the serving version's archive window ended: the next one starts there."""
    if parent is None:
        return None
    until_ms = registry.read_manifest(root, parent).data_window.get("archive_until_ms")
    return datetime.fromtimestamp(until_ms / 1000, UTC) if until_ms else None


def announce(settings: Settings, result: CycleResult) -> None:
    """Tell servers and workers on `model.versions` (they also watch the registry)."""
    from streamrec.producer import EventProducer

    with EventProducer(settings) as producer:
        producer.send_raw(settings.topic_model_versions, None, result.to_json())
