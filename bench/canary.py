"""The canary on the yoochoose prequential replay (issue 17): the first model serves
as control, and a candidate as the `canary` arm of `canary_experiment` at PCT% of
users, while the leader's check (stream/canary_check.py, the real settings) runs every
STREAMREC_CANARY_CHECK_S of the replay's event time. Candidates: `good` (the same
training, another seed) and `bad` (its ranker ordering by the hand blend reversed).
Each model also serves the whole replay alone: the prequential hit@20 the decision is
held to. Writes bench/reports/canary.{md,json} (`--quick`: canary-quick.*), run by
`streamrec bench prequential --canary`."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from bench.common import REPORTS, machine_line, run_record, write_json
from bench.live_replay import (
    VARIANTS,
    Plan,
    Replay,
    VariantResult,
    console,
    install,
    load_replay,
    private_stack,
    replay_settings,
    score,
    train_first_model,
    warmed_pipeline,
)
from bench.prequential import DATASETS
from bench.scenarios.data import shared
from bench.scenarios.models import publish_reversed_blend
from retrain.cycle import cycle_plan
from stream.canary_check import CanaryCheck
from streamrec import experiments, hit_rates
from streamrec.canary import CANARY_ARM, CONTROL_ARM, Checked, Rule, canary_experiment
from streamrec.canary import decide as rule_decides
from streamrec.client import Recommendations
from streamrec.errors import StreamrecError
from streamrec.events import Event
from streamrec.experiments import Experiment, wilson_interval
from streamrec.hit_rates import ArmCounts
from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore

CANDIDATES = {
    "good": "the first model's training again with another seed (1 instead of 0)",
    "bad": "the first model with its ranker scoring by the hand blend reversed "
    "(the user's own latest items, co-visitation and popular items last)",
}
PERCENT = 10
# 2,000 events give a 10% arm about 150 counted clicks, under the 200 the rule waits for.
QUICK_PERCENT = 50
QUICK_LIMIT = 2000
SALT = "bench-canary"  # a fixed split: the same users in each arm on every run
REALTIME = VARIANTS["realtime"]
LIVE = Plan(live_clock=True)
ARMS = (CONTROL_ARM, CANARY_ARM)


class CanaryWatcher:
    """The replay's side of the experiment: before a round's events are sent, waits until
    the server has written back the answers it gave users with state (the clicks that
    follow are counted against them, as a user acting seconds later would be); after
    they are applied, ticks the leader's check at every `check_s` of the replay's event
    time until it promotes or rolls back."""

    def __init__(
        self, settings: Settings, experiment: Experiment, replay: Replay, check_s: float
    ) -> None:
        if check_s <= 0:
            raise StreamrecError(f"a canary check every {check_s} s of event time never ends")
        self.settings = settings
        self.experiment = experiment
        self.check_ms = int(check_s * 1000)
        self.next_check_ms = replay.scored[0].ts_ms + self.check_ms
        self.with_state = {e.user_id for e in replay.warmup}
        self.expected_answers = 0
        self.store: StateStore | None = None
        self.checks: list[dict[str, Any]] = []
        self.last: Checked | None = None  # the latest check that read the counts
        self.decided: Checked | None = None
        self.decided_after: int | None = None  # events replayed when it was decided
        self.decided_at_hours: float | None = None  # into the replay, by event time
        self.final_counts: dict[str, dict[str, int]] = {}
        self.first_ms = replay.scored[0].ts_ms

    def _store(self) -> StateStore:
        if self.store is None:
            self.store = StateStore(self.settings)
        return self.store

    async def answered(
        self, step: list[tuple[int, Event]], answers: list[Recommendations | None]
    ) -> None:
        if self.decided is not None:
            return
        self.expected_answers += sum(
            1
            for (_, event), answer in zip(step, answers, strict=True)
            if answer is not None and answer.arm is not None and event.user_id in self.with_state
        )
        store = self._store()
        for _ in range(3000):  # at most 30 s; the server writes back every 20 ms
            counts = await store.experiment_counts(self.experiment.run_id)
            if sum(arm.get("answers", 0) for arm in counts.values()) >= self.expected_answers:
                return
            await asyncio.sleep(0.01)
        raise StreamrecError(
            f"the server wrote back fewer than the {self.expected_answers} arm answers "
            "expected within 30 s; see its log under logs/"
        )

    async def applied(self, step: list[tuple[int, Event]], done: int) -> None:
        self.with_state.update(event.user_id for _, event in step)
        latest_ms = max(event.ts_ms for _, event in step)
        while self.decided is None and latest_ms >= self.next_check_ms:
            self.next_check_ms += self.check_ms
            check = CanaryCheck(self.settings, self._store(), IngestMetrics(CollectorRegistry()))
            checked = await check.tick()
            if checked is None:
                continue
            self.last = checked
            self.checks.append({"events": done, "action": checked.action, "reason": checked.reason})
            if checked.action in ("promoted", "rolled_back"):
                self.decided, self.decided_after = checked, done
                self.decided_at_hours = round((latest_ms - self.first_ms) / 3_600_000, 2)
                console.print(f"canary {checked.action} after {done:,} events: {checked.reason}")

    async def finished(self) -> None:
        if self.store is not None:
            self.final_counts = await self.store.experiment_counts(self.experiment.run_id)
            await self.store.close()


def measure(
    replay: Replay,
    workdir: Path,
    candidates: tuple[str, ...] = tuple(CANDIDATES),
    percent: int = PERCENT,
    plan: Plan = LIVE,
    **settings: Any,
) -> dict[str, Any]:
    """Each candidate as a canary beside the first model, and every model alone, on
    `replay` in pipelines of their own on one private stack; `settings`: overrides
    (the canary rule's, for a small replay)."""
    base = replay_settings(workdir, **settings)
    rule = Rule.of(base)
    # The bench ticks the leader's check on the replay's clock; the worker's own timer
    # (wall-clock) stays off.
    quiet = {"canary_check_s": 0}
    db = itertools.count(1)
    alone: dict[str, VariantResult] = {}
    bundles: dict[str, Path] = {}
    runs: dict[str, dict[str, Any]] = {}
    with private_stack(base) as stack:
        with warmed_pipeline(stack, replay, REALTIME, next(db), plan, "control", **quiet) as p:
            first = train_first_model(p.settings, workdir)
            if "good" in candidates:
                seeded = cycle_plan(p.settings, first=True)
                seeded = replace(
                    seeded,
                    encoder=replace(seeded.encoder, seed=1),
                    ranker=replace(seeded.ranker, seed=1),
                )
                bundles["good"] = train_first_model(p.settings, workdir, "good-model", seeded)
            install(first, p.settings.registry)
            alone[CONTROL_ARM] = _scored("control alone", p.settings, replay, plan)
        if "bad" in candidates:
            bundles["bad"] = first.parent / publish_reversed_blend(first.parent, first.name).version
        for name in candidates:
            with warmed_pipeline(
                stack, replay, REALTIME, next(db), plan, f"{name}-alone", **quiet
            ) as p:
                install(bundles[name], p.settings.registry)
                alone[name] = _scored(f"{name} alone", p.settings, replay, plan)
        for name in candidates:
            with warmed_pipeline(
                stack, replay, REALTIME, next(db), plan, f"{name}-canary", **quiet
            ) as p:
                root = p.settings.registry
                install(first, root)
                install(bundles[name], root, make_current=False)
                experiment = experiments.start(
                    root, canary_experiment(bundles[name].name, percent, salt=SALT)
                )
                watcher = CanaryWatcher(p.settings, experiment, replay, base.canary_check_s)
                console.print(f"{name} canary at {percent}%: {experiment.name}")
                result = score(p.settings, replay, REALTIME, p.worker, plan, watcher)
            runs[name] = _canary_summary(name, watcher, result, alone, rule)
    return {
        "dataset": DATASETS[0].describe,
        "warmup_events": len(replay.warmup),
        "scored_events": len(replay.scored),
        "percent": percent,
        "salt": SALT,
        "rule": {**asdict(rule), "check_s": base.canary_check_s},
        "hit_window_s": base.hit_window_s,
        "first_model": first.name,
        "alone": {
            name: _rate(result.hits) | {"errors": result.errors} for name, result in alone.items()
        },
        "canaries": runs,
    }


def _scored(title: str, settings: Settings, replay: Replay, plan: Plan) -> VariantResult:
    result = score(settings, replay, REALTIME, None, plan)
    console.print(f"{title}: hit@20 {100 * float(result.hits.mean()):.2f} ({result.errors} errors)")
    return result


def _rate(hits: np.ndarray) -> dict[str, Any]:
    """hit@20 in percent with its 95% Wilson interval."""
    n, k = len(hits), int(hits.sum())
    low, high = wilson_interval(k, n)
    return {
        "events": n,
        "hits": k,
        "hr20": _pct(k / n if n else 0),
        "hr20_95": [_pct(low), _pct(high)],
    }


def _pct(rate: float) -> float:
    return round(100 * rate, 2)


def _canary_summary(
    name: str,
    watcher: CanaryWatcher,
    result: VariantResult,
    alone: dict[str, VariantResult],
    rule: Rule,
) -> dict[str, Any]:
    decided, last = watcher.decided, watcher.last
    # The deciding check's counts and bounds; for an undecided canary the last check's.
    decision = last.decision if last else None
    at_decision = (
        {CONTROL_ARM: decision.control, CANARY_ARM: decision.canary}
        if decision
        else {arm: ArmCounts.of(watcher.final_counts.get(arm, {})) for arm in ARMS}
    )
    online = {}
    for arm, arm_counts in at_decision.items():
        low, high = hit_rates.interval(arm_counts)
        online[arm] = {
            "answers": arm_counts.answers,
            "users": arm_counts.users,
            "clicks": arm_counts.clicks,
            "hits": arm_counts.hits,
            "effective_clicks": round(hit_rates.effective_clicks(arm_counts), 1),
            "hit_rate": _pct(arm_counts.hits / arm_counts.clicks) if arm_counts.clicks else None,
            "hit_rate_95": [_pct(low), _pct(high)],
        }
    arms = np.array(result.arms, dtype=object)
    during = {arm: _rate(result.hits[arms == arm]) for arm in ARMS}
    whole = _pct(float(alone[name].hits.mean()) - float(alone[CONTROL_ARM].hits.mean()))
    truth = "worse" if whole < -100 * rule.margin else "not worse"
    action = decided.action if decided else "undecided"
    return {
        "candidate": CANDIDATES[name],
        "version": watcher.experiment.arm(CANARY_ARM).version,
        "experiment": watcher.experiment.name,
        "decision": action,
        "reason": last.reason if last else "never checked",
        "events_until_decision": watcher.decided_after,
        "event_hours_until_decision": watcher.decided_at_hours,
        "checks": len(watcher.checks),
        "online_at_decision": online,
        "bounds": None
        if decision is None or decision.lower is None
        else {
            "difference": _pct(decision.difference or 0.0),
            "lower": _pct(decision.lower),
            "upper": _pct(decision.upper or 0.0),
        },
        "clicks_needed_per_arm": None if decided else _clicks_needed(at_decision, rule),
        "hr20_by_arm_during_experiment": during,
        "whole_replay_hr20_difference": whole,
        "whole_replay_truth": truth,
        "agrees": None if not decided else (action == "promoted") == (truth == "not worse"),
        "errors": result.errors,
        "seconds": round(result.seconds, 1),
    }


def _clicks_needed(counts: dict[str, ArmCounts], rule: Rule) -> int | None:
    """At the arms' observed rates, the clicks per arm at which the rule itself
    (streamrec.canary.decide) would stop waiting: an estimate for an undecided canary."""
    control, canary = counts[CONTROL_ARM], counts[CANARY_ARM]
    if not control.clicks or not canary.clicks:
        return None

    def verdict(clicks: int) -> str:
        def at(arm: ArmCounts) -> ArmCounts:
            # More users like the ones seen: every count and per-user sum scaled alike.
            scale = clicks / arm.clicks
            sums = (arm.hits, arm.users, arm.clicks_sq, arm.hits_sq, arm.clicks_hits)
            return ArmCounts(0, clicks, *(round(value * scale) for value in sums))

        return rule_decides(at(control), at(canary), rule, 0.0).verdict

    low, high = rule.min_clicks, 10_000_000
    if verdict(high) == "wait":
        return None
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if verdict(middle) == "wait" else (low, middle)
    return low


def run_bench(quick: bool = False, limit: int | None = None) -> Path:
    """The canary section of the prequential bench on the yoochoose replay; `quick`: its
    first 2,000 events at 50% (`limit`: the first N at 10%)."""
    load_before = os.getloadavg()
    yoochoose = DATASETS[0]
    assert yoochoose.history is not None
    replay = load_replay(
        shared(yoochoose.data), shared(yoochoose.history), limit=QUICK_LIMIT if quick else limit
    )
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-bench-canary-"))
    try:
        report = measure(replay, workdir, percent=QUICK_PERCENT if quick else PERCENT)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stem = "canary-quick" if quick else "canary"
    report |= run_record("streamrec bench prequential --canary", quick, limit, load_before)
    write_json(stem, report)
    path = REPORTS / f"{stem}.md"
    path.write_text(markdown(report), encoding="utf-8")
    return path


def markdown(report: dict[str, Any]) -> str:
    rule = report["rule"]
    lines = [
        "# Canary on the prequential replay",
        "",
        f"Command: `{report['command']}`. {machine_line(report['machine'])} "
        f"Load average before/after: {report['load_average']['before'][0]:.1f} / "
        f"{report['load_average']['after'][0]:.1f} (other work shared the cores when > 2).",
        "",
        f"{report['dataset']}. Warm-up {report['warmup_events']:,} events, scored "
        f"{report['scored_events']:,}, replayed as in bench/reports/prequential.md (frozen "
        "model + real-time state) but each event sent at the wall-clock time, after the "
        "answers it may hit (`Plan.live_clock`). Control: the first model "
        f"(`{report['first_model']}`); canary: each candidate at {report['percent']}% of "
        f"users (`canary_experiment`, salt `{report['salt']}`). The leader's check "
        "(stream/canary_check.py, which `streamrec experiment decide` shares) runs every "
        f"{rule['check_s']:.0f} s of the replay's event time with the real rule: at least "
        f"{rule['min_clicks']} clicks per arm, margin {rule['margin']}, one-sided confidence "
        f"{rule['confidence']} at every check (an always-valid confidence sequence on the "
        "difference of the arms' hit rates, each a ratio over users with the delta "
        f"method's variance); hit window {report['hit_window_s']} s. Each model also "
        "serves the whole replay alone: its prequential hit@20 is the truth the decision "
        "is held to.",
        "",
        "| canary | decision | events until it | event time (h) "
        "| control users / clicks / hits | canary users / clicks / hits "
        "| online hit rate % control / canary (95%, over users) "
        "| d and always-valid one-sided bounds (points) | agrees with the whole replay |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in report["canaries"].items():
        online = run["online_at_decision"]
        control, canary = online[CONTROL_ARM], online[CANARY_ARM]
        bounds = run["bounds"]
        d = (
            f"{bounds['difference']:+.2f} [{bounds['lower']:+.2f}, {bounds['upper']:+.2f}]"
            if bounds
            else "-"
        )
        until = run["events_until_decision"]
        decision = run["decision"] + ("" if until is not None else " at the end")
        lines.append(
            f"| {name} | {decision} | {until if until is not None else '-'} "
            f"| {run['event_hours_until_decision'] or '-'} "
            f"| {_counts_cell(control)} | {_counts_cell(canary)} "
            f"| {_rate_cell(control)} / {_rate_cell(canary)} | {d} "
            f"| {'-' if run['agrees'] is None else 'yes' if run['agrees'] else 'no'} |"
        )
    lines += [
        "",
        "Counts and bounds are the ones the deciding check read (the last check's for an "
        "undecided canary). An undecided canary's `clicks needed` is the rule's own "
        "answer (`streamrec.canary.decide`) at the observed rates with more clicks.",
        "",
        "| canary | reason | checks | clicks needed per arm | hit@20 by arm while it ran: "
        "control / canary (events) | whole replay hit@20 alone: candidate − control "
        "(points) | errors | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in report["canaries"].items():
        during = run["hr20_by_arm_during_experiment"]
        lines.append(
            f"| {name} | {run['reason']} | {run['checks']} "
            f"| {run['clicks_needed_per_arm'] or '-'} "
            f"| {during[CONTROL_ARM]['hr20']} ({during[CONTROL_ARM]['events']:,}) / "
            f"{during[CANARY_ARM]['hr20']} ({during[CANARY_ARM]['events']:,}) "
            f"| {run['whole_replay_hr20_difference']:+.2f} ({run['whole_replay_truth']}) "
            f"| {run['errors']} | {run['seconds']} |"
        )
    lines += [
        "",
        "Each model alone over the whole replay (hit@20 %, 95% Wilson interval):",
        "",
        "| model | hit@20 | 95% | events | errors |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["alone"].items():
        lo, hi = row["hr20_95"]
        lines.append(
            f"| {name} | {row['hr20']} | {lo}–{hi} | {row['events']:,} | {row['errors']} |"
        )
    return "\n".join([*lines, ""])


def _counts_cell(arm: dict[str, Any]) -> str:
    return f"{arm['users']} / {arm['clicks']} / {arm['hits']}"


def _rate_cell(arm: dict[str, Any]) -> str:
    if arm["hit_rate"] is None:
        return "-"
    lo, hi = arm["hit_rate_95"]
    return f"{arm['hit_rate']} ({lo}–{hi})"
