"""The canary's automatic decision: promote, roll back or wait, from the two arms'
online hit rates (hits / clicks), a margin and a confidence (docs/experiments.md);
and `check`, one evaluation that reads the counts and acts, which
`streamrec experiment decide` and the leader worker run.

The test: each arm's hit rate is a ratio of sums over its users, with the delta
method's variance (streamrec/hit_rates.py: a user's clicks count together); the
difference's bounds are an always-valid one-sided confidence sequence (a normal
mixture, as in the mSPRT), so checking every few minutes on growing counts keeps the
stated confidence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

from streamrec import experiments, registry
from streamrec.errors import BundleError
from streamrec.experiments import CURRENT_ARM, Arm, Experiment
from streamrec.hit_rates import ArmCounts, estimate

if TYPE_CHECKING:
    from streamrec.settings import Settings
    from streamrec.state import StateStore

log = logging.getLogger(__name__)

Verdict = Literal["promote", "rollback", "wait"]
VERDICTS: tuple[Verdict, ...] = ("promote", "rollback", "wait")
# The arms `streamrec retrain --canary` starts; `decide` judges only such an experiment.
CONTROL_ARM = "control"
CANARY_ARM = "canary"
EXPERIMENT_PREFIX = "canary-"
# The smallest mixture scale, for a margin of 0 (absolute hit rate); the scales' step.
MIN_MIXTURE_SCALE = 0.01
MIXTURE_STEP = 5


@dataclass(frozen=True)
class Rule:
    min_clicks: int  # per arm, before anything but a time-out is decided
    margin: float  # absolute hit rate the canary may lose to control
    confidence: float  # one-sided, 0.5 < confidence < 1
    max_duration_s: float  # undecided this long after the start: roll back
    # per arm, users with a click, as well: the variance over users (the delta
    # method's) is an estimate that wants a few dozen of them
    min_users: int = 30

    @classmethod
    def of(cls, settings: Settings) -> Rule:
        return cls(
            settings.canary_min_clicks,
            settings.canary_margin,
            settings.canary_confidence,
            settings.canary_max_duration_s,
            settings.canary_min_users,
        )

    @property
    def mixture_scales(self) -> tuple[float, float, float]:
        """τ₁..τ₃, the spreads of differences the confidence sequence mixes over: the
        margin, where a same-quality canary's promotion is decided, and 5 and 25 times
        it, so a canary far worse is rolled back on few clicks."""
        scale = max(self.margin, MIN_MIXTURE_SCALE)
        return scale, scale * MIXTURE_STEP, scale * MIXTURE_STEP**2


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    control: ArmCounts
    canary: ArmCounts
    difference: float | None  # canary - control hit rate (adjusted); None before min_clicks
    lower: float | None  # the one-sided bounds of the difference at the confidence
    upper: float | None
    margin: float
    confidence: float
    age_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mixture_ratio(half_width: float, variance: float, scale: float) -> float:
    """The one-sided normal mixture's likelihood ratio when d̂ - d = `half_width`, for an
    estimate of this variance, mixing over effects θ >= 0 with a half-normal of scale τ:
        M(b) = 2 · √(v / (v + τ²)) · Φ(s) · exp(s² / 2),  s = b·τ / √(v·(v + τ²))."""
    s = half_width * scale / math.sqrt(variance * (variance + scale * scale))
    log_ratio = math.log(2 * NormalDist().cdf(s)) + s * s / 2
    return math.sqrt(variance / (variance + scale * scale)) * math.exp(min(log_ratio, 700.0))


def always_valid_half_width(variance: float, scales: tuple[float, ...], confidence: float) -> float:
    """b such that an estimate d̂ of d with this variance has d >= d̂ - b (and, on its
    own, d <= d̂ + b) at `confidence` at every look at once: the one-sided normal-mixture
    confidence sequence (Robbins; Howard et al. 2021; the mSPRT of Johari et al. 2017),
    its ratio the mean of `mixture_ratio` over `scales`. A mean of martingales is one
    (for a Gaussian d̂), so by Ville's inequality it ever reaches 1/α with probability
    at most α = 1 - confidence. b solves mean M(b) = 1/α (it grows with b)."""
    target = 1 / (1 - confidence)

    def ratio(half_width: float) -> float:
        return sum(mixture_ratio(half_width, variance, s) for s in scales) / len(scales)

    low, high = 0.0, math.sqrt(variance)
    while ratio(high) < target:
        low, high = high, 2 * high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if ratio(middle) < target else (low, middle)
    return high


def difference_bounds(
    control: ArmCounts, canary: ArmCounts, confidence: float, scales: tuple[float, ...]
) -> tuple[float, float, float]:
    """(difference, lower, upper): the canary's hit rate minus control's and its
    one-sided always-valid bounds at `confidence` (each bound on its own holds at that
    level, at every look). The arms are independent (users split by a hash): the
    variances of their ratio estimates add."""
    control_rate, canary_rate = estimate(control), estimate(canary)
    variance = control_rate.variance + canary_rate.variance
    difference = canary_rate.rate - control_rate.rate
    half = always_valid_half_width(variance, scales, confidence)
    return difference, difference - half, difference + half


def decide(control: ArmCounts, canary: ArmCounts, rule: Rule, age_s: float) -> Decision:
    """Promote when the lower bound of (canary - control) is >= -margin; roll back when
    the upper bound is < -margin; else wait. Before both arms have `min_clicks`
    clicks from `min_users` users: wait. Past `max_duration_s` without a promotion:
    roll back (conservative)."""

    def made(
        verdict: Verdict, reason: str, bounds: tuple[float, float, float] | None = None
    ) -> Decision:
        difference, lower, upper = bounds or (None, None, None)
        return Decision(
            verdict, reason, control, canary, difference, lower, upper,
            rule.margin, rule.confidence, age_s,
        )  # fmt: skip

    timed_out = age_s >= rule.max_duration_s
    fewest = min(control.clicks, canary.clicks)
    fewest_users = min(_users(control), _users(canary))
    short = None
    if fewest < rule.min_clicks:
        short = f"{fewest} clicks of the {rule.min_clicks} needed"
    elif fewest_users < rule.min_users:
        short = f"{fewest_users} users with a click of the {rule.min_users} needed"
    if short is not None:
        if timed_out:
            return made("rollback", f"undecided after {age_s:.0f} s: an arm has {short}")
        return made("wait", f"an arm has {short}")
    bounds = difference_bounds(control, canary, rule.confidence, rule.mixture_scales)
    _, lower, upper = bounds
    level = f"{rule.confidence:.0%}"
    if lower >= -rule.margin:
        reason = f"not worse than control by more than {rule.margin} ({lower:+.4f} at {level})"
        return made("promote", reason, bounds)
    if upper < -rule.margin:
        reason = f"worse than control by more than {rule.margin} ({upper:+.4f} at {level})"
        return made("rollback", reason, bounds)
    if timed_out:
        return made("rollback", f"undecided after {age_s:.0f} s", bounds)
    return made("wait", f"bounds {lower:+.4f}..{upper:+.4f} straddle -{rule.margin}", bounds)


def _users(arm: ArmCounts) -> int:
    """Users with a click; counters from before the per-user sums count one a click."""
    return arm.users if arm.by_user else arm.clicks


def canary_experiment(
    version: str, percent: int, now: datetime | None = None, salt: str | None = None
) -> Experiment:
    """`canary-<version>`: control follows CURRENT with 100 - percent of users, the
    canary arm is `version` with `percent`; the salt defaults to the name."""
    if not 0 < percent < 100:
        raise ValueError(f"a canary's share is 1 to 99 percent, got {percent}")
    return experiments.new_experiment(
        f"{EXPERIMENT_PREFIX}{version}",
        [Arm(CONTROL_ARM, CURRENT_ARM, 100 - percent), Arm(CANARY_ARM, version, percent)],
        salt,
        now,
    )


def is_canary(experiment: Experiment) -> bool:
    """Judged automatically: the two arms `retrain --canary` starts, control on CURRENT."""
    arms = {arm.name: arm.version for arm in experiment.arms}
    return arms.keys() == {CONTROL_ARM, CANARY_ARM} and arms[CONTROL_ARM] == CURRENT_ARM


@dataclass(frozen=True)
class Checked:
    """One evaluation: what ran, what was decided and what was done about it."""

    action: Literal["promoted", "rolled_back", "waiting", "none"]
    reason: str
    experiment: str | None = None
    version: str | None = None  # the canary's
    decision: Decision | None = None

    def to_json(self) -> str:
        decision = self.decision.to_dict() if self.decision else None
        return json.dumps({**asdict(self), "decision": decision})


async def check(root: Path, store: StateStore, rule: Rule, now: datetime | None = None) -> Checked:
    """Read the running canary's counts from Redis, decide, and act: promote the canary
    (its version opened first; one that does not open is rolled back instead) or stop
    the experiment. A promotion or rollback is one line in experiments.jsonl and in the
    canary version's lineage, with the decision; every decision is logged."""
    experiment = await asyncio.to_thread(experiments.read, root)
    if experiment is None:
        return Checked("none", "no experiment runs")
    if not is_canary(experiment):
        return Checked("none", f"{experiment.name!r} is not a canary", experiment.name)
    counts = await store.experiment_counts(experiment.run_id)
    moment = now or datetime.now(UTC)
    age_s = max(0.0, moment.timestamp() - experiment.started_ms / 1000)
    decision = decide(
        ArmCounts.of(counts.get(CONTROL_ARM, {})),
        ArmCounts.of(counts.get(CANARY_ARM, {})),
        rule,
        age_s,
    )
    version = experiment.arm(CANARY_ARM).version
    log.info("canary %s (%s): %s: %s", experiment.name, version, decision.verdict, decision.reason)
    if decision.verdict == "wait":
        return Checked("waiting", decision.reason, experiment.name, version, decision)
    details: dict[str, object] = {"by": "canary", "decision": decision.to_dict()}
    if decision.verdict == "promote":
        try:
            await asyncio.to_thread(experiments.promote, root, CANARY_ARM, experiment, details)
            return Checked("promoted", decision.reason, experiment.name, version, decision)
        except BundleError as exc:
            reason = f"the canary's version does not open: {registry.refusal_reason(exc)}"
            log.error("canary %s: promotion refused, rolling back: %s", experiment.name, reason)
            details["refused"] = reason
    await asyncio.to_thread(experiments.stop, root, experiment, details)
    reason = str(details.get("refused", decision.reason))
    return Checked("rolled_back", reason, experiment.name, version, decision)
