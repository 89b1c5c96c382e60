"""An experiment arm's online hit rate (hits / clicks) as a ratio of sums over its
users, the unit the arms are assigned by: its delta-method variance, which counts a
user's clicks together instead of as independent trials, and the interval shown per
arm (docs/experiments.md, "Online figures per arm").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from streamrec.experiments import wilson_interval


@dataclass(frozen=True)
class ArmCounts:
    """One arm's counters in `sr:x:{run}` (the apply and write-back scripts)."""

    answers: int
    clicks: int
    hits: int
    # Over the arm's users with a click, the sums of 1, clicks², hits² and clicks·hits
    # (each user's clicks and hits in the run). 0 in counters written before they were
    # kept: the clicks are then taken as independent (`by_user` False).
    users: int = 0
    clicks_sq: int = 0
    hits_sq: int = 0
    clicks_hits: int = 0

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> ArmCounts:
        return cls(
            *(counts.get(name, 0) for name in ("answers", "clicks", "hits", "users")),
            *(counts.get(name, 0) for name in ("clicks_sq", "hits_sq", "clicks_hits")),
        )

    @property
    def by_user(self) -> bool:
        """Whether the per-user sums are there (or nothing was clicked)."""
        return self.users > 0 or self.clicks == 0


@dataclass(frozen=True)
class RatioEstimate:
    rate: float  # hits / clicks, adjusted (one user with a hit, one without, added)
    variance: float  # of that rate: the delta method's, at least the binomial one
    binomial: float  # what it would be were every click independent

    @property
    def design_effect(self) -> float:
        """How many times the independent-clicks variance the user-level one is (>= 1)."""
        return self.variance / self.binomial


def estimate(arm: ArmCounts) -> RatioEstimate:
    """The arm's hit rate R = Σh / Σc over users and the delta-method variance of a
    ratio of sums, n/(n-1) · Σ(hᵢ - R·cᵢ)² / (Σc)², from the arm's sums (Σ(hᵢ - R·cᵢ)²
    = Σh² - 2R·Σch + R²·Σc²). Two users of one click each are added, one with a hit and
    one without (Agresti-Caffo's one hit and one miss, as users), and the variance is
    kept at least the binomial R(1-R)/Σc: an arm with no hits, only hits or users who
    all click alike keeps an error above 0, and clustering never narrows it."""
    if arm.by_user:
        users, sq, hits_sq, both = arm.users, arm.clicks_sq, arm.hits_sq, arm.clicks_hits
    else:  # counters from before the per-user sums: one user per click
        users, sq, hits_sq, both = arm.clicks, arm.clicks, arm.hits, arm.hits
    users, clicks, hits = users + 2, arm.clicks + 2, arm.hits + 1
    sq, hits_sq, both = sq + 2, hits_sq + 1, both + 1
    rate = hits / clicks
    residual = max(0.0, hits_sq - 2 * rate * both + rate * rate * sq)
    delta = users / (users - 1) * residual / (clicks * clicks)
    binomial = rate * (1 - rate) / clicks
    return RatioEstimate(rate, max(delta, binomial), binomial)


def interval(arm: ArmCounts, z: float = 1.96) -> tuple[float, float]:
    """The hit rate's interval (95% with z = 1.96): Wilson's on the arm's effective
    clicks, its clicks over the design effect (Kish's effective sample size), so it
    stays in [0, 1], is sound near 0 and is Wilson's own for independent clicks.
    (0, 1) without clicks."""
    if arm.clicks <= 0:
        return 0.0, 1.0
    effective = effective_clicks(arm)
    return wilson_interval(arm.hits * effective / arm.clicks, effective, z)


def effective_clicks(arm: ArmCounts) -> float:
    """As many independent clicks as the arm's clicks are worth: clicks / design effect."""
    return arm.clicks / estimate(arm).design_effect if arm.clicks > 0 else 0.0
