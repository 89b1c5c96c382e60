"""Training cases see the co-visitation table as it was before their next event."""

from __future__ import annotations

import pytest

from retrain.covis_cases import CaseReplay, time_ordered_cases
from retrain.data import UserSequence
from streamrec.covis import CovisRule
from streamrec.events import EventType
from streamrec.features import EVENT_TYPES

CLICK = EventType.CLICK


def seq(user: str, items: list[str], ts: list[int]) -> UserSequence:
    return UserSequence(user, tuple(items), (CLICK,) * len(items), tuple(ts))


def test_each_case_sees_only_earlier_events() -> None:
    # v links a -> b at t=2; u's case (next event at t=3) may see it; w links a -> c
    # at t=5, after u's next event: u's case must not see c.
    u = seq("u", ["a", "x"], [1, 3])
    v = seq("v", ["a", "b"], [1, 2])
    w = seq("w", ["a", "c"], [4, 5])
    cases, moments, events = time_ordered_cases([u, v, w], [u, w])
    assert cases.targets == ["x", "c"]  # in the time order of the next events
    covis = CaseReplay(CovisRule(half_life_s=1e9), 5, events, 3600.0)
    total, latest = covis.at(moments[0], cases.prefixes[0].item_ids, 3)
    assert set(total) == {"b"} and latest == total
    total, _ = covis.at(moments[1], cases.prefixes[1].item_ids, 5)
    assert set(total) == {"b", "x"}  # u's x arrived at t=3, before w's c
    with pytest.raises(ValueError, match="go back"):
        covis.at(moments[0], cases.prefixes[0].item_ids, 3)


def test_each_case_sees_popularity_and_trending_as_they_were() -> None:
    """Popularity features and trending candidates of a training case come from the
    events before its next event, decayed as the stream keeps them, never later."""
    u = seq("u", ["a", "x"], [0, 3_600_000])
    v = UserSequence("v", ("b", "b"), (CLICK, EventType.PURCHASE), (1_000, 2_000))
    w = seq("w", ["c", "c", "c"], [4_000_000, 4_000_001, 4_000_002])
    _, moments, events = time_ordered_cases([u, v, w], [u])
    replay = CaseReplay(CovisRule(), 5, events, popularity_half_life_s=3600.0)
    replay.advance(moments[0])  # u's case: before x, at t = 1 h; w's c came later
    assert replay.popularity.trending.ranked(3) == ["b", "a"]
    rows = replay.popularity.rows(["a", "b", "c"], now_ms=3_600_000)
    click, purchase = EVENT_TYPES.index(CLICK), EVENT_TYPES.index(EventType.PURCHASE)
    assert rows[0, click] == pytest.approx(0.5)  # one half-life old
    assert rows[1, click] == pytest.approx(0.5 ** (3_599_000 / 3_600_000))
    assert rows[1, purchase] == pytest.approx(0.5 ** (3_598_000 / 3_600_000))
    assert rows[2].sum() == 0.0


def test_beyond_max_cases_a_seeded_sample_keeps_time_order_and_moments() -> None:
    history = [
        seq(f"u{n}", [f"i{n + k}" for k in range(6)], [n + 10 * k for k in range(6)])
        for n in range(40)
    ]
    every, every_moments, events = time_ordered_cases(history, history)
    sampled, moments, same_events = time_ordered_cases(history, history, max_cases=50)
    again, _, _ = time_ordered_cases(history, history, max_cases=50)
    assert len(every.targets) == 200 and len(sampled.targets) == 50
    assert same_events == events and again == sampled
    pairs = list(zip(every_moments, every.targets, strict=True))
    kept = list(zip(moments, sampled.targets, strict=True))
    assert set(kept) <= set(pairs) and kept == sorted(kept)
    for moment, case in zip(moments, sampled.prefixes, strict=True):
        assert events[moment][:2] == (case.user_id, next(t for m, t in pairs if m == moment))
