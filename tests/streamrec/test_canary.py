"""The canary's decision rule over constructed counts: hand-computed bounds, the
three verdicts, the minimum of clicks, the time-out and the edge cases."""

from __future__ import annotations

import math

import pytest

from streamrec.canary import ArmCounts, Rule, decide, difference_bounds
from streamrec.settings import Settings

RULE = Rule(min_clicks=100, margin=0.02, confidence=0.95, max_duration_s=86400)


def arm(clicks: int, hits: int) -> ArmCounts:
    return ArmCounts(answers=clicks * 3, clicks=clicks, hits=hits)


def test_bounds_by_hand() -> None:
    # Adjusted rates: control 31/102, canary 41/102; z(0.95) = 1.644854.
    difference, lower, upper = difference_bounds(arm(100, 30), arm(100, 40), 0.95)
    control, canary = 31 / 102, 41 / 102
    error = math.sqrt(control * (1 - control) / 102 + canary * (1 - canary) / 102)
    assert difference == pytest.approx(10 / 102)
    assert lower == pytest.approx(10 / 102 - 1.644854 * error, abs=1e-6)
    assert upper == pytest.approx(10 / 102 + 1.644854 * error, abs=1e-6)


def test_a_clearly_better_canary_is_promoted() -> None:
    decision = decide(arm(1000, 300), arm(1000, 400), RULE, age_s=60)
    assert decision.verdict == "promote"
    assert decision.lower is not None and decision.lower >= -RULE.margin


def test_a_clearly_worse_canary_is_rolled_back() -> None:
    decision = decide(arm(1000, 400), arm(1000, 250), RULE, age_s=60)
    assert decision.verdict == "rollback"
    assert decision.upper is not None and decision.upper < -RULE.margin
    assert "worse than control" in decision.reason


def test_equal_arms_are_promoted_once_the_interval_is_narrow_enough() -> None:
    # The same rate: promoted when z * error <= margin, waiting while it is wider.
    assert decide(arm(200, 60), arm(200, 60), RULE, age_s=60).verdict == "wait"
    assert decide(arm(5000, 1500), arm(5000, 1500), RULE, age_s=60).verdict == "promote"


def test_too_few_clicks_waits_whatever_the_rates() -> None:
    decision = decide(arm(99, 0), arm(5000, 5000), RULE, age_s=60)
    assert (decision.verdict, decision.difference) == ("wait", None)
    assert "99 clicks" in decision.reason


def test_no_clicks_at_all_waits_then_times_out_to_a_rollback() -> None:
    assert decide(arm(0, 0), arm(0, 0), RULE, age_s=0).verdict == "wait"
    late = decide(arm(0, 0), arm(0, 0), RULE, age_s=RULE.max_duration_s)
    assert late.verdict == "rollback" and "undecided" in late.reason


def test_an_undecided_comparison_rolls_back_at_the_time_out() -> None:
    assert decide(arm(300, 90), arm(300, 84), RULE, age_s=60).verdict == "wait"
    assert decide(arm(300, 90), arm(300, 84), RULE, age_s=86400).verdict == "rollback"
    # A decided promotion is not overruled by the clock.
    assert decide(arm(5000, 1500), arm(5000, 1500), RULE, age_s=10**7).verdict == "promote"


def test_all_hits_and_no_hits_keep_a_positive_error() -> None:
    # Unadjusted, both would have a standard error of 0 and a point interval.
    _, lower, upper = difference_bounds(arm(150, 150), arm(150, 150), 0.95)
    assert lower < 0 < upper
    assert decide(arm(150, 150), arm(150, 150), RULE, age_s=60).verdict == "promote"
    assert decide(arm(150, 150), arm(150, 0), RULE, age_s=60).verdict == "rollback"
    assert decide(arm(150, 0), arm(150, 0), RULE, age_s=60).verdict == "promote"


def test_a_stricter_confidence_or_margin_waits_longer() -> None:
    counts = (arm(20000, 6000), arm(20000, 5900))
    assert decide(*counts, RULE, age_s=60).verdict == "promote"
    strict = Rule(min_clicks=100, margin=0.0, confidence=0.99, max_duration_s=86400)
    assert decide(*counts, strict, age_s=60).verdict == "wait"


def test_the_rule_reads_the_settings() -> None:
    settings = Settings(canary_min_clicks=50, canary_margin=0.01, canary_confidence=0.9)
    assert Rule.of(settings) == Rule(50, 0.01, 0.9, settings.canary_max_duration_s)
