"""Training cases see the co-visitation table as it was before their next event."""

from __future__ import annotations

import pytest

from retrain.covis_cases import CaseCovis, time_ordered_cases
from retrain.data import UserSequence
from streamrec.covis import CovisRule
from streamrec.events import EventType

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
    covis = CaseCovis(CovisRule(half_life_s=1e9), 5, events)
    total, latest = covis.at(moments[0], cases.prefixes[0].item_ids, 3)
    assert set(total) == {"b"} and latest == total
    total, _ = covis.at(moments[1], cases.prefixes[1].item_ids, 5)
    assert set(total) == {"b", "x"}  # u's x arrived at t=3, before w's c
    with pytest.raises(ValueError, match="go back"):
        covis.at(moments[0], cases.prefixes[0].item_ids, 3)
