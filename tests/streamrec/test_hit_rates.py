"""An arm's hit rate over its users: the interval shown per arm is Wilson's for
independent clicks and wider when a user's clicks go together."""

from __future__ import annotations

import pytest

from streamrec.experiments import wilson_interval
from streamrec.hit_rates import ArmCounts, effective_clicks, estimate, interval


def test_independent_clicks_get_wilsons_interval() -> None:
    one_each = ArmCounts(0, 400, 120, users=400, clicks_sq=400, hits_sq=120, clicks_hits=120)
    low, high = interval(one_each)
    # Within the n/(n-1) of the delta method: Wilson's own for 400 clicks.
    assert (low, high) == pytest.approx(wilson_interval(120, 400), abs=1e-3)
    assert effective_clicks(one_each) == pytest.approx(400, rel=0.01)


def test_counters_without_per_user_sums_are_read_as_independent_clicks() -> None:
    old = ArmCounts.of({"answers": 9, "clicks": 400, "hits": 120})
    assert not old.by_user
    assert interval(old) == pytest.approx(wilson_interval(120, 400), abs=1e-3)
    assert ArmCounts.of({}).by_user and interval(ArmCounts.of({})) == (0.0, 1.0)


def test_few_users_with_many_clicks_widen_it() -> None:
    # 400 clicks from 4 users: one who hits 90% of the time, three who hit 10%, 20%, 0%.
    few = ArmCounts.of(
        {"clicks": 400, "hits": 120, "users": 4, "clicks_sq": 4 * 100**2,
         "hits_sq": 90**2 + 10**2 + 20**2, "clicks_hits": 100 * 120}
    )  # fmt: skip
    low, high = interval(few)
    naive_low, naive_high = wilson_interval(120, 400)
    assert low < naive_low - 0.15 and high > naive_high + 0.15
    assert 0.0 <= low < 0.3 < high <= 1.0
    assert estimate(few).design_effect > 20
    assert effective_clicks(few) < 20
