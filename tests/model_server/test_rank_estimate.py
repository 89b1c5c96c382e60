"""When a request skips ranking for want of budget, and how it recovers."""

from __future__ import annotations

from model_server.recommender import RankEstimate

BUDGET_S = 0.05


def test_ranking_is_skipped_only_while_the_budget_cannot_cover_it() -> None:
    estimate = RankEstimate(BUDGET_S)
    for _ in range(50):
        estimate.record(0.004)
    assert estimate.covers(0.040)
    assert not estimate.covers(0.001)


def test_one_stalled_rank_does_not_turn_ranking_off_for_good() -> None:
    estimate = RankEstimate(BUDGET_S)
    for _ in range(50):
        estimate.record(0.004)
    estimate.record(30.0)  # a frozen Redis inside the rank
    skipped = 0
    while not estimate.covers(0.030):  # what a request usually has left
        skipped += 1
        assert skipped < 20, "ranking stayed off"
    assert skipped <= 5


def test_without_a_budget_a_slow_rank_is_never_skipped() -> None:
    estimate = RankEstimate(float("inf"))
    estimate.record(5.0)
    assert estimate.covers(float("inf"))


def test_skipped_requests_bring_ranking_back() -> None:
    estimate = RankEstimate(1.0)
    estimate.record(1.0)  # ranking as slow as the whole budget, once
    assert not estimate.covers(0.05)
    skipped = 1
    while not estimate.covers(0.05):
        skipped += 1
        assert skipped < 30, "ranking stayed off"
