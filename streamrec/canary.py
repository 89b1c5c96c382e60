"""The canary's automatic decision: promote, roll back or wait, from the two arms'
online hit rates (clicks, hits), a margin and a confidence (docs/experiments.md).

The test: a one-sided normal approximation for the difference of two proportions,
Agresti-Caffo adjusted (one hit and one miss added to each arm, which keeps the
standard error above 0 for an arm with no hits or only hits).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from streamrec.settings import Settings

Verdict = Literal["promote", "rollback", "wait"]
# The arms `streamrec retrain --canary` starts; `decide` judges only such an experiment.
CONTROL_ARM = "control"
CANARY_ARM = "canary"
EXPERIMENT_PREFIX = "canary-"


@dataclass(frozen=True)
class ArmCounts:
    answers: int
    clicks: int
    hits: int

    @classmethod
    def of(cls, counts: dict[str, int]) -> ArmCounts:
        return cls(counts.get("answers", 0), counts.get("clicks", 0), counts.get("hits", 0))


@dataclass(frozen=True)
class Rule:
    min_clicks: int  # per arm, before anything but a time-out is decided
    margin: float  # absolute hit rate the canary may lose to control
    confidence: float  # one-sided, 0.5 < confidence < 1
    max_duration_s: float  # undecided this long after the start: roll back

    @classmethod
    def of(cls, settings: Settings) -> Rule:
        return cls(
            settings.canary_min_clicks,
            settings.canary_margin,
            settings.canary_confidence,
            settings.canary_max_duration_s,
        )


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


def difference_bounds(
    control: ArmCounts, canary: ArmCounts, confidence: float
) -> tuple[float, float, float]:
    """(difference, lower, upper): the canary's hit rate minus control's and its
    one-sided bounds at `confidence` (each bound on its own holds at that level)."""
    z = NormalDist().inv_cdf(confidence)
    rate_control = (control.hits + 1) / (control.clicks + 2)
    rate_canary = (canary.hits + 1) / (canary.clicks + 2)
    error = math.sqrt(
        rate_control * (1 - rate_control) / (control.clicks + 2)
        + rate_canary * (1 - rate_canary) / (canary.clicks + 2)
    )
    difference = rate_canary - rate_control
    return difference, difference - z * error, difference + z * error


def decide(control: ArmCounts, canary: ArmCounts, rule: Rule, age_s: float) -> Decision:
    """Promote when the lower bound of (canary - control) is >= -margin; roll back when
    the upper bound is < -margin; else wait. Before both arms have `min_clicks`
    clicks: wait. Past `max_duration_s` without a promotion: roll back (conservative)."""

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
    if fewest < rule.min_clicks:
        if timed_out:
            return made("rollback", f"undecided after {age_s:.0f} s: an arm has {fewest} clicks")
        return made("wait", f"an arm has {fewest} clicks of the {rule.min_clicks} needed")
    bounds = difference_bounds(control, canary, rule.confidence)
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
