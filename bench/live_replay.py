"""Prequential evaluation: replay a dataset in time order through the live pipeline
(Kafka → stream worker → Redis → model server) and, before each event, ask
`/recommend` for its user and score the answer against the event's item (hit@20,
MRR@20); then send the event. Test-then-train, the way a deployed system meets
its traffic.

Four variants run on the same replay, each in its own pipeline (topics, consumer
group, Redis database, archive and registry) on one private broker and Redis:

- `trending`: every answer from trending items, which the stream keeps current;
- `frozen`: the model trained on the warm-up, and nothing after the warm-up
  reaches the pipeline: user state and trending stay as they were (a batch
  system refreshed before the replay);
- `realtime`: that same model, with every event folded into the user's state
  as it happens;
- `retrain`: real-time state plus the worker's retraining schedule (every M
  applied events), hot-swapped into the server as versions pass the gate.

The warm-up (`--history FILE`, or the first 20% of the events) goes through the
pipeline first and is not scored; the first model is trained once from its
archive, exactly as `streamrec retrain` trains a first version, and every
variant serves a copy of it. The replay walks the events in windows of 256;
inside a window it goes in rounds, round r holding each user's r-th event:
ask for all of them, send them, wait until the worker has applied them (their
dedup keys exist).
So every answer sees all of its user's earlier events, as in a live system
whose users act seconds apart, and every earlier window's events. Event
times are shifted so the newest event lies at the replay's start (gaps kept),
so decay and recency behave as they do on live traffic.

The same run scores the online baselines of retrain/online_baselines.py
in-process on the same replay, in the same order: each observes the warm-up,
then per round answers for every event of the round before it observes them
(`AnswerFirst` refuses anything else), so an answer sees only what the
pipeline had seen. Every result is also broken down by case (`repeat`: the
user touched the item before, warm-up included; `new_item`; `no_history`) and
by the event's type.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import orjson
import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from devtools.devstack import DevStack, free_port
from devtools.processes import ServiceProcess
from devtools.scrape import counter_total, histogram_mean
from retrain.online_baselines import BASELINES, Baseline
from retrain.training import TrainPlan
from streamrec import registry
from streamrec.catalogue import Catalogue
from streamrec.client import AsyncRecommenderClient, Recommendations
from streamrec.errors import InputFormatError, StreamrecError
from streamrec.event_files import FileFormat, read_events
from streamrec.events import Event, EventType, Rejection
from streamrec.items import item_from_fields
from streamrec.keys import dedup_key
from streamrec.producer import EventProducer
from streamrec.settings import Settings
from streamrec.state import StateStore
from streamrec.topics import ensure_topics, pipeline_names

log = logging.getLogger(__name__)
console = Console(stderr=True)

K = 20
RETRAIN_OUTCOMES = ("published", "rejected", "skipped", "failed")
CASES = ("repeat", "new_item", "no_history")
# The breakdown's group of events whose item the first model had never seen.
COLD = "cold_item"
# ... and of those whose item nobody had touched before, in the warm-up or the
# replay. A catalogue built from the stream names exactly the items that will be
# touched, so what a variant hits here it found in a catalogue that knows the
# future (docs/models.md, "The ceiling"); a baseline never hits these.
UNSEEN = "unseen_item"
CASE_GROUPS = (*CASES, COLD, UNSEEN)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    strategy: Literal["model", "trending"]
    realtime: bool  # events reach the pipeline while they are scored
    retrain: bool


VARIANTS = {
    v.name: v
    for v in (
        Variant("trending", "trending only", "trending", realtime=True, retrain=False),
        Variant("frozen", "model frozen after warm-up", "model", realtime=False, retrain=False),
        Variant(
            "realtime", "frozen model + real-time state", "model", realtime=True, retrain=False
        ),
        Variant("retrain", "real-time state + retraining", "model", realtime=True, retrain=True),
    )
}


@dataclass(frozen=True)
class Replay:
    name: str
    warmup: list[Event]
    scored: list[Event]


@dataclass
class VariantResult:
    variant: str
    label: str
    ts_ms: np.ndarray  # the scored events' (shifted) times
    hits: np.ndarray  # 1 when the event's item was in the top 20
    reciprocal_ranks: np.ndarray  # 1/rank within the top 20, else 0
    errors: int
    fallbacks: Counter[str]
    versions: Counter[str | None]  # which model version answered (None: none yet), how often
    seconds: float
    retrains: dict[str, int] = field(default_factory=dict)
    retrain_seconds: float | None = None  # mean duration of a finished cycle
    # How often each item was in an answer's top 20 (for coverage and exposure), and
    # the mean share of distinct categories in a top 20 (items with a category).
    exposure: Counter[str] = field(default_factory=Counter)
    category_diversity: float | None = None
    # Per scored event: the experiment arm its answer named (None: no experiment, or
    # no answer); empty for a baseline.
    arms: list[str | None] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "events": len(self.hits),
            "hr20": round(100 * float(self.hits.mean()), 2) if len(self.hits) else None,
            "mrr20": round(100 * float(self.reciprocal_ranks.mean()), 2)
            if len(self.hits)
            else None,
            "errors": self.errors,
            "fallbacks": dict(self.fallbacks),
            "versions_answering": len(self.versions),
            "seconds": round(self.seconds, 1),
            "events_per_s": round(len(self.hits) / self.seconds, 1) if self.seconds else None,
            "retrains": self.retrains,
            "retrain_seconds": self.retrain_seconds,
        }


@dataclass
class PrequentialRun:
    """What one `run` measured on one replay."""

    variants: list[VariantResult]
    baselines: list[VariantResult]
    cases: np.ndarray  # each scored event's case, one of CASES
    types: np.ndarray  # each scored event's type (EventType values)
    # Per variant and baseline: what its answers showed (`exposure_summary`).
    exposure: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # Each scored event whose item the first model's vocabulary lacks (a cold item
    # for the frozen and real-time variants); None when no model was trained.
    cold: np.ndarray | None = None
    # Each scored event whose item no event touched before it.
    unseen: np.ndarray | None = None

    def breakdown(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per variant and baseline, per case and then per event type that occurs:
        events, hit@20 and MRR@20 (percent)."""
        groups = {case: self.cases == case for case in CASES}
        if self.cold is not None:
            groups[COLD] = self.cold
        if self.unseen is not None:
            groups[UNSEEN] = self.unseen
        groups |= {t.value: self.types == t.value for t in EventType if t.value in self.types}
        return {
            result.variant: {name: _group_summary(result, mask) for name, mask in groups.items()}
            for result in [*self.variants, *self.baselines]
        }


def _group_summary(result: VariantResult, mask: np.ndarray) -> dict[str, Any]:
    events = int(mask.sum())
    if not events:
        return {"events": 0, "hr20": None, "mrr20": None}
    return {
        "events": events,
        "hr20": round(100 * float(result.hits[mask].mean()), 2),
        "mrr20": round(100 * float(result.reciprocal_ranks[mask].mean()), 2),
    }


def exposure_summary(result: VariantResult, touched: Counter[str]) -> dict[str, float | None]:
    """Beside hit rate: what the answers showed; `touched`: how often each of the
    replay's items occurs in it (warm-up and scored). `coverage20`: the share of the
    replay's items ever in a top 20; `tail_share`: the share of shown slots taken by
    items outside the 20% most touched over the whole replay; `gini`: of how often
    each of the replay's items was shown (0: all alike, 1: one item only);
    `category_diversity`: distinct categories per item with a category in a top 20,
    the mean over answers (None without categories). In percent but the Gini."""
    shown = result.exposure
    slots = sum(shown.values())
    if not slots:
        return {"coverage20": None, "tail_share": None, "gini": None, "category_diversity": None}
    head = {item for item, _ in touched.most_common(max(1, len(touched) // 5))}
    counts = np.sort(np.array([shown.get(item, 0) for item in touched], dtype=np.float64))
    n = len(counts)
    gini = float((2 * np.arange(1, n + 1) - n - 1) @ counts / (n * counts.sum()))
    return {
        "coverage20": round(100 * len(shown) / len(touched), 2),
        "tail_share": round(100 * sum(c for i, c in shown.items() if i not in head) / slots, 2),
        "gini": round(gini, 3),
        "category_diversity": None
        if result.category_diversity is None
        else round(100 * result.category_diversity, 2),
    }


def first_touches(replay: Replay) -> np.ndarray:
    """Per scored event: is it the first event of its item, warm-up included?"""
    seen = {e.item_id for e in replay.warmup}
    first = []
    for event in replay.scored:
        first.append(event.item_id not in seen)
        seen.add(event.item_id)
    return np.array(first, dtype=bool)


def event_cases(replay: Replay) -> tuple[np.ndarray, np.ndarray]:
    """Each scored event's case (`repeat`: its user touched the item before, in the
    warm-up or earlier in the replay; `new_item`: the user has history, not this
    item; `no_history`) and its type. The user's true history decides, whatever
    a variant was shown."""
    touched: dict[str, set[str]] = {}
    for event in replay.warmup:
        touched.setdefault(event.user_id, set()).add(event.item_id)
    cases = []
    for event in replay.scored:
        items = touched.setdefault(event.user_id, set())
        cases.append(
            "no_history" if not items else "repeat" if event.item_id in items else "new_item"
        )
        items.add(event.item_id)
    return np.array(cases), np.array([e.type.value for e in replay.scored])


@dataclass(frozen=True)
class Plan:
    window: int = 256  # events whose users run side by side (each user's in order)
    concurrency: int = 32  # requests in flight at most
    retrain_every_events: int = 0  # 0: a sixth of the scored events
    train_epochs: int = 2
    timeout_s: float = 120.0  # longest wait for events to be applied
    # Asked of every /recommend: at most this many items of a category (None: the
    # server's setting, 0 by default), to see what the cap costs and what it spreads.
    max_per_category: int | None = None
    # Each scored event takes the wall-clock time at which it is sent (kept increasing),
    # not its shifted time: the online hit counters count a click on an item shown
    # before it, so an event must come after the answers it may hit, as live ones do.
    live_clock: bool = False


class RoundWatcher(Protocol):
    """Called by the replay around each round: what an experiment run needs to see."""

    async def answered(
        self, step: list[tuple[int, Event]], answers: list[Recommendations | None]
    ) -> None:
        """After the round's answers (in `step`'s order; None where the ask failed),
        before its events are sent."""

    async def applied(self, step: list[tuple[int, Event]], done: int) -> None:
        """After the round's events were applied; `done`: events replayed so far."""

    async def finished(self) -> None:
        """After the replay (or when it failed): close what the watcher opened."""


def load_replay(
    data: Path,
    history: Path | None = None,
    warmup_fraction: float = 0.2,
    limit: int | None = None,
    fmt: FileFormat | None = None,
) -> Replay:
    """Events in time order, split into warm-up (`history`, else the first
    `warmup_fraction` of `data`) and scored (at most `limit`); times shifted so the
    newest event is now."""
    events = _valid_events(data, fmt)
    if history is not None:
        warmup, scored = _valid_events(history, fmt), events
    else:
        cut = int(len(events) * warmup_fraction)
        warmup, scored = events[:cut], events[cut:]
    scored = scored[:limit]
    if not scored:
        raise InputFormatError(f"{data}: no events left to score")
    newest = max(e.ts_ms for e in [*warmup, *scored])
    shift = int(time.time() * 1000) - newest
    return Replay(
        data.stem,
        [replace(e, ts_ms=e.ts_ms + shift) for e in warmup],
        [replace(e, ts_ms=e.ts_ms + shift) for e in scored],
    )


def replay_categories(replay: Replay) -> dict[str, tuple[str, ...]]:
    """The catalogue's categories of the replay's items, where its events carry one
    (a Taobao file's `category_id`): what a shop's catalogue knows of every item
    before anyone touches it. Empty for a file without categories."""
    categories: dict[str, tuple[str, ...]] = {}
    for event in [*replay.warmup, *replay.scored]:
        category = (event.context or {}).get("category_id")
        if category is not None:
            categories[event.item_id] = (str(category),)
    return categories


def _valid_events(path: Path, fmt: FileFormat | None) -> list[Event]:
    if not path.is_file():
        raise InputFormatError(f"expected an event file at {path}, found none")
    events: list[tuple[int, int, Event]] = []
    rejected: Counter[str] = Counter()
    for line, parsed in read_events(path, fmt):
        if isinstance(parsed, Rejection):
            rejected[parsed.reason] += 1
        else:
            events.append((parsed.ts_ms, line, parsed))
    if rejected:
        log.warning("%s: skipped %d invalid rows: %s", path, rejected.total(), dict(rejected))
    events.sort(key=lambda row: (row[0], row[1]))
    return [event for _, _, event in events]


def run(
    replay: Replay,
    workdir: Path,
    variants: Sequence[str] = tuple(VARIANTS),
    plan: Plan = Plan(),
    baselines: Sequence[str] = tuple(BASELINES),
) -> PrequentialRun:
    """Every baseline on `replay` in-process, then every variant on a private
    broker and Redis under `workdir` (none is started when `variants` is empty)."""
    _check_names("variants", variants, VARIANTS)
    _check_names("baselines", baselines, BASELINES)
    settings = replay_settings(workdir)
    cases, types = event_cases(replay)
    outcome = PrequentialRun([], [], cases, types)
    for name in baselines:
        outcome.baselines.append(
            score_baseline(
                replay,
                name,
                settings.popularity_half_life_s,
                plan,
                exclude_purchased=settings.serve_exclude_purchased,
            )
        )
        console.print(_line(replay.name, outcome.baselines[-1]))
    if variants:
        outcome.variants, first_model = _run_variants(replay, settings, variants, plan)
        known = set(orjson.loads((first_model / "vocab.json").read_bytes())["item_ids"])
        outcome.cold = np.array([e.item_id not in known for e in replay.scored])
    outcome.unseen = first_touches(replay)
    touched = Counter(e.item_id for e in [*replay.warmup, *replay.scored])
    outcome.exposure = {
        r.variant: exposure_summary(r, touched) for r in [*outcome.variants, *outcome.baselines]
    }
    return outcome


def replay_settings(workdir: Path, **overrides: Any) -> Settings:
    """What every replay's pipelines share, before the private stack's addresses."""
    return Settings(
        home=workdir,
        input_partitions=2,
        registry_poll_s=0.5,
        # Quality is measured here, not speed: never cut ranking or a Redis read short.
        serve_budget_ms=10_000,
        serve_redis_timeout_ms=10_000,
        log_level="WARNING",
        **overrides,
    )


def _check_names(kind: str, names: Sequence[str], known: Mapping[str, object]) -> None:
    unknown = set(names) - set(known)
    if unknown:
        raise StreamrecError(f"unknown {kind} {sorted(unknown)}; known: {', '.join(known)}")


def _run_variants(
    replay: Replay, settings: Settings, variants: Sequence[str], plan: Plan
) -> tuple[list[VariantResult], Path]:
    """The variants' results, and the first model's bundle (every variant's start)."""
    workdir = settings.home
    if plan.retrain_every_events == 0:
        plan = replace(plan, retrain_every_events=max(1000, len(replay.scored) // 6))
    first_model: Path | None = None
    results = []
    with private_stack(settings) as base:
        for db, name in enumerate(variants, start=1):
            variant = VARIANTS[name]
            with warmed_pipeline(base, replay, variant, db, plan) as pipeline:
                first_model = first_model or train_first_model(
                    pipeline.settings, workdir / replay.name
                )
                install(first_model, pipeline.settings.registry)
                worker = pipeline.scoring_worker()
                results.append(score(pipeline.settings, replay, variant, worker, plan))
            console.print(_line(replay.name, results[-1]))
    assert first_model is not None  # `variants` is not empty
    return results, first_model


@contextmanager
def private_stack(settings: Settings) -> Iterator[Settings]:
    """A broker and Redis of their own under `settings.home`; `settings` pointed at them."""
    stack = DevStack(settings.home / "stack")
    status = stack.up()
    try:
        yield settings.model_copy(
            update={
                "kafka_bootstrap": status.kafka_bootstrap or "",
                "redis_url": status.redis_url or "",
            }
        )
    finally:
        stack.down()


@dataclass
class Pipeline:
    """One variant's pipeline on the private stack, its warm-up applied by a worker that
    never retrains (`worker`): `scoring_worker` gives the worker the scoring runs with."""

    settings: Settings
    variant: Variant
    worker: ServiceProcess | None
    running: ExitStack

    def scoring_worker(self) -> ServiceProcess | None:
        """The variants whose scoring worker differs from the warm-up's get a fresh one
        (a retraining one, or none for the frozen variant)."""
        if self.worker is not None and (self.variant.retrain or not self.variant.realtime):
            self.worker.stop()
            self.worker = (
                self.running.enter_context(_worker(self.settings))
                if self.variant.realtime
                else None
            )
        return self.worker


@contextmanager
def warmed_pipeline(
    base: Settings,
    replay: Replay,
    variant: Variant,
    db: int,
    plan: Plan,
    name: str | None = None,
    **overrides: Any,
) -> Iterator[Pipeline]:
    """`variant`'s own topics, Redis database `db`, archive and registry (under `name`,
    the variant's by default; `overrides`: more settings), the replay's catalogue, and
    the warm-up sent through a worker and applied. No model is installed yet."""
    settings = _variant_settings(base, replay, variant, db, plan, name).model_copy(update=overrides)
    with ExitStack() as running:
        quiet = settings.model_copy(update={"retrain_every_events": 0})
        ensure_topics(settings)
        _load_catalogue(settings, replay)
        worker = running.enter_context(_worker(quiet))
        _send_and_wait(settings, replay.warmup, plan, f"{replay.name}: warm-up")
        yield Pipeline(settings, variant, worker, running)


CATALOGUE_LOAD_BATCH = 5000  # records per pipelined round trip


def _load_catalogue(settings: Settings, replay: Replay) -> None:
    """The replay's catalogue (`replay_categories`) in Redis before the first event,
    every item available, as a shop's catalogue exists before anyone touches it."""
    categories = replay_categories(replay)
    if not categories:
        return
    ts_ms = min(e.ts_ms for e in [*replay.warmup, *replay.scored]) - 1
    records = []
    for item_id, item_categories in categories.items():
        record = item_from_fields(
            {"item_id": item_id, "ts": ts_ms, "category": list(item_categories)}
        )
        if isinstance(record, Rejection):
            raise StreamrecError(f"item {item_id!r} of the replay: {record.reason}")
        records.append(record)

    async def load() -> None:
        catalogue = Catalogue(settings)
        try:
            for start in range(0, len(records), CATALOGUE_LOAD_BATCH):
                outcomes = await catalogue.apply_records_each(
                    records[start : start + CATALOGUE_LOAD_BATCH]
                )
                failed = [o for o in outcomes if isinstance(o, Exception)]
                if failed:
                    raise StreamrecError(f"the catalogue was not loaded: {failed[0]}")
        finally:
            await catalogue.close()

    asyncio.run(load())
    console.print(f"{replay.name}: {len(records):,} catalogue records loaded")


def _variant_settings(
    base: Settings, replay: Replay, variant: Variant, db: int, plan: Plan, name: str | None = None
) -> Settings:
    name = name or variant.name
    home = base.home / replay.name / name
    redis_base = base.redis_url.rsplit("/", 1)[0]
    return base.model_copy(
        update={
            **pipeline_names(f"preq-{replay.name}-{name}"),
            "redis_url": f"{redis_base}/{db}",
            "archive_dir": home / "archive",
            "registry": home / "registry",
            "serve_port": free_port(),
            "worker_web_port": free_port(),
            "serve_strategy": variant.strategy,
            "retrain_epochs": plan.train_epochs,
            "retrain_every_s": 0,
            "retrain_every_events": plan.retrain_every_events if variant.retrain else 0,
            "retrain_min_events": max(1, min(1000, plan.retrain_every_events)),
        }
    )


def install(bundle: Path, root: Path, make_current: bool = True) -> None:
    """A copy of `bundle` in the registry at `root`, made current (or not)."""
    shutil.copytree(bundle, root / bundle.name)
    if make_current:
        registry.set_current(root, bundle.name)


def train_first_model(
    settings: Settings, workdir: Path, name: str = "first-model", plan: TrainPlan | None = None
) -> Path:
    """What a first `streamrec retrain` makes of the warm-up's archive (with `plan`: its
    own plan, another seed for instance), in a registry of its own at `workdir/name`."""
    from retrain.cycle import run_cycle

    root = workdir / name
    console.print(f"training {name} on the warm-up ({settings.archive_root})")
    result = run_cycle(
        settings.model_copy(update={"registry": root, "retrain_min_events": 1}),
        plan=plan,
        progress=True,
    )
    if result.outcome != "published" or result.version is None:
        raise StreamrecError(f"{name} was not trained: {result.reason}")
    console.print(f"{name} {result.version}: {result.metrics.get('candidate')}")
    return root / result.version


@contextmanager
def _worker(settings: Settings) -> Iterator[ServiceProcess]:
    log_path = settings.home / "logs" / f"{settings.app_id}-worker.log"
    with ServiceProcess(settings, ["worker"], log_path, settings.worker_web_port) as worker:
        yield worker


@contextmanager
def _server(settings: Settings) -> Iterator[str]:
    log_path = settings.home / "logs" / f"{settings.app_id}-serve.log"
    with ServiceProcess(settings, ["serve"], log_path, settings.serve_port):
        yield f"http://127.0.0.1:{settings.serve_port}"


def _send_and_wait(settings: Settings, events: list[Event], plan: Plan, title: str) -> None:
    async def main() -> None:
        state = aioredis.Redis.from_url(settings.redis_url)
        try:
            with EventProducer(settings) as producer, _progress(title, len(events)) as advance:
                for start in range(0, len(events), 2000):
                    chunk = events[start : start + 2000]
                    for event in chunk:
                        producer.send(event)
                    producer.flush()
                    await _wait_applied(state, chunk, plan.timeout_s)
                    advance(len(chunk))
            # The warm-up is the first model's data, not a reason to retrain.
            await StateStore(settings, state).take_new_event_count()
        finally:
            await state.aclose()

    asyncio.run(main())


async def _wait_applied(state: aioredis.Redis, events: list[Event], timeout_s: float) -> None:
    """Until the worker has applied every event (its dedup key exists)."""
    keys = [dedup_key(e.user_id, e.event_id) for e in events]
    deadline = time.monotonic() + timeout_s
    pause = 0.002
    while True:
        pipe = state.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        missing = [key for key, found in zip(keys, await pipe.execute(), strict=True) if not found]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise StreamrecError(
                f"{len(missing)} of {len(keys)} events not applied within {timeout_s:.0f} s "
                f"(first missing key {missing[0]}); see the worker's log under logs/"
            )
        keys = missing
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.01)


def score(
    settings: Settings,
    replay: Replay,
    variant: Variant,
    worker: ServiceProcess | None,
    plan: Plan,
    watcher: RoundWatcher | None = None,
) -> VariantResult:
    with _server(settings) as url:
        started = time.perf_counter()
        result = asyncio.run(_replay(settings, url, replay, variant, plan, watcher))
        result.seconds = time.perf_counter() - started
    if worker is not None and variant.retrain:
        metrics = worker.metrics_text()
        result.retrains = {
            outcome: int(counter_total(metrics, "streamrec_retrain", outcome=outcome))
            for outcome in RETRAIN_OUTCOMES
        }
        mean = histogram_mean(metrics, "streamrec_retrain_seconds")
        result.retrain_seconds = None if mean is None else round(mean, 1)
    return result


async def _replay(
    settings: Settings,
    url: str,
    replay: Replay,
    variant: Variant,
    plan: Plan,
    watcher: RoundWatcher | None = None,
) -> VariantResult:
    n = len(replay.scored)
    scores = _Scores(n, replay_categories(replay))
    state = aioredis.Redis.from_url(settings.redis_url)
    producer = EventProducer(settings) if variant.realtime else None
    asking = asyncio.Semaphore(plan.concurrency)
    clock_ms = 0

    async def ask(
        client: AsyncRecommenderClient, index: int, event: Event
    ) -> Recommendations | None:
        async with asking:
            try:
                answer = await client.recommend(
                    event.user_id, k=K, max_per_category=plan.max_per_category
                )
            except StreamrecError as exc:
                scores.errors += 1
                log.warning("recommend for %s failed: %s", event.user_id, exc)
                return None
            scores.record(index, event.item_id, answer)
            return answer

    def timed(event: Event) -> Event:
        nonlocal clock_ms
        if not plan.live_clock:
            return event
        clock_ms = max(int(time.time() * 1000), clock_ms + 1)
        return replace(event, ts_ms=clock_ms)

    done = 0
    try:
        async with AsyncRecommenderClient(url, timeout_s=30) as client:
            with _progress(f"{replay.name}: {variant.name}", n) as advance:
                for start in range(0, n, plan.window):
                    for step in _rounds(replay.scored, start, min(start + plan.window, n)):
                        answers = await asyncio.gather(*(ask(client, i, e) for i, e in step))
                        if watcher is not None:
                            await watcher.answered(step, answers)
                        if producer is not None:
                            for _, event in step:
                                producer.send(timed(event))
                            await _wait_applied(state, [e for _, e in step], plan.timeout_s)
                        done += len(step)
                        if watcher is not None:
                            await watcher.applied(step, done)
                        advance(len(step))
    finally:
        if watcher is not None:
            await watcher.finished()
        if producer is not None:
            producer.close()
        await state.aclose()
    ts = np.array([e.ts_ms for e in replay.scored], dtype=np.int64)
    return VariantResult(
        variant.name, variant.label, ts, scores.hits, scores.reciprocal_ranks,
        scores.errors, scores.fallbacks, scores.versions, 0.0, exposure=scores.exposure,
        category_diversity=scores.mean_diversity(), arms=scores.arms,
    )  # fmt: skip


class AnswerFirst:
    """A baseline fed test-then-train: the warm-up first; then a scored event may
    be observed only once it was answered for, and an answer is refused once a
    later event of the same user was observed. With `exclude_purchased` its answers
    leave out what the user bought, as the pipeline's do (same rule for both)."""

    def __init__(self, baseline: Baseline, exclude_purchased: bool = False) -> None:
        self.baseline = baseline
        self.exclude_purchased = exclude_purchased
        self._answered: set[int] = set()
        self._user_observed: dict[str, int] = {}  # user → index of their latest observed event
        self._purchased: dict[str, set[str]] = {}
        self._scoring = False

    def warm(self, event: Event) -> None:
        if self._scoring:
            raise StreamrecError(f"warm-up event {event.event_id} after scoring began")
        self._observe(event)

    def _observe(self, event: Event) -> None:
        if self.exclude_purchased and event.type == EventType.PURCHASE:
            self._purchased.setdefault(event.user_id, set()).add(event.item_id)
        self.baseline.observe(event)

    def answer(self, index: int, event: Event, k: int) -> list[str]:
        self._scoring = True
        seen = self._user_observed.get(event.user_id, -1)
        if seen >= index:
            raise StreamrecError(
                f"answer for scored event {index} asked after user {event.user_id}'s "
                f"event {seen} was observed"
            )
        self._answered.add(index)
        bought = self._purchased.get(event.user_id, set())
        answer = self.baseline.recommend(event.user_id, k + len(bought))
        return [item for item in answer if item not in bought][:k]

    def observe(self, index: int, event: Event) -> None:
        if index not in self._answered:
            raise StreamrecError(
                f"scored event {index} (user {event.user_id}, item {event.item_id}) "
                "observed before it was answered for"
            )
        self._answered.remove(index)
        self._user_observed[event.user_id] = index
        self._observe(event)


def score_baseline(
    replay: Replay,
    name: str,
    half_life_s: float,
    plan: Plan = Plan(),
    exclude_purchased: bool = False,
) -> VariantResult:
    """A baseline on the replay in the pipeline's order (`_rounds` of each window):
    answers for a round's events first, then observes them. `half_life_s`: its
    popularity fill's; `exclude_purchased`: the pipeline's purchase filter."""
    spec = BASELINES[name]
    started = time.perf_counter()
    baseline = AnswerFirst(spec.build(half_life_s), exclude_purchased)
    for event in replay.warmup:
        baseline.warm(event)
    n = len(replay.scored)
    scores = _Scores(n, replay_categories(replay))
    with _progress(f"{replay.name}: {name}", n) as advance:
        for start in range(0, n, plan.window):
            for step in _rounds(replay.scored, start, min(start + plan.window, n)):
                for index, event in step:
                    scores.hit(index, event.item_id, baseline.answer(index, event, K))
                for index, event in step:
                    baseline.observe(index, event)
                advance(len(step))
    ts = np.array([e.ts_ms for e in replay.scored], dtype=np.int64)
    return VariantResult(
        name, spec.label, ts, scores.hits, scores.reciprocal_ranks, 0, Counter(), Counter(),
        time.perf_counter() - started, exposure=scores.exposure,
        category_diversity=scores.mean_diversity(),
    )  # fmt: skip


def _rounds(events: list[Event], start: int, stop: int) -> list[list[tuple[int, Event]]]:
    """The window's events in rounds: round r holds every user's r-th event of the
    window, so each user's events stay in order and the users of a round run
    side by side."""
    by_user: dict[str, list[tuple[int, Event]]] = {}
    for index in range(start, stop):
        by_user.setdefault(events[index].user_id, []).append((index, events[index]))
    rounds: list[list[tuple[int, Event]]] = []
    for rows in by_user.values():
        for r, row in enumerate(rows):
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(row)
    return rounds


class _Scores:
    def __init__(self, n: int, categories: Mapping[str, Sequence[str]]) -> None:
        self.categories = categories
        self.diversity: list[float] = []
        self.hits = np.zeros(n, dtype=np.float32)
        self.reciprocal_ranks = np.zeros(n, dtype=np.float32)
        self.errors = 0
        self.fallbacks: Counter[str] = Counter()
        self.versions: Counter[str | None] = Counter()
        self.exposure: Counter[str] = Counter()
        self.arms: list[str | None] = [None] * n

    def mean_diversity(self) -> float | None:
        return float(np.mean(self.diversity)) if self.diversity else None

    def record(self, index: int, item_id: str, answer: Recommendations) -> None:
        self.fallbacks[answer.fallback or "none"] += 1
        self.versions[answer.model_version] += 1
        self.arms[index] = answer.arm
        self.hit(index, item_id, answer.item_ids)

    def hit(self, index: int, item_id: str, item_ids: list[str]) -> None:
        self.exposure.update(item_ids[:K])
        with_category = [self.categories[i] for i in item_ids[:K] if self.categories.get(i)]
        if with_category:
            distinct = {c for categories in with_category for c in categories}
            self.diversity.append(len(distinct) / len(with_category))
        if item_id in item_ids[:K]:
            self.hits[index] = 1
            self.reciprocal_ranks[index] = 1 / (item_ids.index(item_id) + 1)


@contextmanager
def _progress(title: str, total: int) -> Iterator[Any]:
    columns = (
        TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(title, total=total)
        yield lambda done: progress.advance(task, done)


def curves(result: VariantResult, bins: int = 20) -> dict[str, list[float]]:
    """hit@20 and MRR@20 (percent) over equal-count slices of the replay, by time."""
    edges = np.linspace(0, len(result.hits), bins + 1).astype(int)
    first = int(result.ts_ms[0]) if len(result.ts_ms) else 0
    out: dict[str, list[float]] = {"hours": [], "hr20": [], "mrr20": []}
    for lo, hi in itertools.pairwise(edges):
        if hi <= lo:
            continue
        out["hours"].append(round((int(result.ts_ms[hi - 1]) - first) / 3_600_000, 3))
        out["hr20"].append(round(100 * float(result.hits[lo:hi].mean()), 2))
        out["mrr20"].append(round(100 * float(result.reciprocal_ranks[lo:hi].mean()), 2))
    return out


def _line(dataset: str, result: VariantResult) -> str:
    s = result.summary()
    scores = f"{dataset} {result.variant:>9}: hit@20 {s['hr20']:6.2f}  MRR@20 {s['mrr20']:6.2f}"
    if result.variant in BASELINES:
        return f"{scores}  ({s['events']:,} events, {s['seconds']} s)"
    return (
        f"{scores}  ({s['events']:,} events, {s['events_per_s']}/s, errors {s['errors']}, "
        f"fallbacks {s['fallbacks']}, retrains {s['retrains'] or '-'})"
    )
