"""Training cases in event-time order, each with the co-visitation table and the
item popularity as the live ones held them just before the case's next event: the
stream worker's state replayed (`streamrec.covis.CovisTable`, the apply script's
twin; `retrain.popularity.ItemPopularity`), never a later event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from retrain.data import NextItemCases, UserSequence
from retrain.holdout import prefix
from retrain.popularity import CategoryPopularity, ItemPopularity
from streamrec.covis import CovisRule, CovisTable, covis_scores, latest_distinct
from streamrec.events import EventType
from streamrec.features import category_candidates

CASE_SAMPLE_SEED = 0

CaseEvent = tuple[str, str, int, EventType]  # user, item, ts ms, type


class CaseReplay:
    """Replays `events` (in time order) into the co-visitation table, the item
    popularity and the popularity within each category (of `categories`: item ->
    its categories) as far as each case asks (`advance`); moments must not go back."""

    def __init__(
        self,
        rule: CovisRule,
        read_items: int,
        events: Sequence[CaseEvent],
        popularity_half_life_s: float,
        categories: Mapping[str, Sequence[str]] | None = None,
        prices: Mapping[str, float] | None = None,
    ) -> None:
        self.rule = rule
        self.read_items = read_items
        self.events = events
        self.table = CovisTable(rule)
        self.popularity = ItemPopularity(popularity_half_life_s)
        self.categories: Mapping[str, Sequence[str]] = categories or {}
        self.prices: Mapping[str, float] = prices or {}
        self.category_popularity = CategoryPopularity(self.categories, popularity_half_life_s)
        self.applied = 0

    def advance(self, moment: int) -> None:
        """Apply the first `moment` events."""
        if moment < self.applied:
            raise ValueError(f"case moments go back: {moment} after {self.applied}")
        for user_id, item_id, ts_ms, event_type in self.events[self.applied : moment]:
            self.table.apply(user_id, item_id, ts_ms)
            self.popularity.observe(item_id, event_type, ts_ms)
            self.category_popularity.observe(item_id, ts_ms)
        self.applied = moment

    def category_items(self, prefix_items: Sequence[str], n: int) -> list[str]:
        """The most popular items now of the categories of the user's latest item."""
        if n <= 0 or not prefix_items:
            return []
        return category_candidates(self.category_popularity.of_item(prefix_items[-1], n), n)

    def covis(
        self, prefix_items: Sequence[str], now_ms: int
    ) -> tuple[dict[str, float], dict[str, float]]:
        """(over the user's latest items, from the latest alone), as serving scores them."""
        if self.read_items <= 0:
            return {}, {}
        lists = [self.table.neighbours(i) for i in latest_distinct(prefix_items, self.read_items)]
        return covis_scores(lists, now_ms, self.rule.half_life_s)

    def at(
        self, moment: int, prefix_items: Sequence[str], now_ms: int
    ) -> tuple[dict[str, float], dict[str, float]]:
        """`covis` once the first `moment` events are in."""
        self.advance(moment)
        return self.covis(prefix_items, now_ms)


def time_ordered_cases(
    history: Sequence[UserSequence],
    case_sequences: Sequence[UserSequence],
    from_ms: int | None = None,
    until_ms: int | None = None,
    max_cases: int | None = None,
) -> tuple[NextItemCases, list[int], list[CaseEvent]]:
    """Every next-item case of `case_sequences` (which are among `history`) whose
    next event lies in [from_ms, until_ms), ordered by the time of that event; per
    case how many of the returned events (all of `history`, in time order) came
    before it. Beyond `max_cases`, a seeded sample of them (the same every call):
    each case holds its prefix and, once built, its candidates' feature rows, so
    their number, not the window's, bounds a cycle's memory."""
    low = -(2**63) if from_ms is None else from_ms
    high = 2**63 - 1 if until_ms is None else until_ms
    wanted = {id(sequence) for sequence in case_sequences}
    timeline = sorted(
        (ts, n, position)
        for n, sequence in enumerate(history)
        for position, ts in enumerate(sequence.ts_ms)
    )

    def is_case(ts: int, n: int, position: int) -> bool:
        return position > 0 and low <= ts < high and id(history[n]) in wanted

    kept: set[int] | None = None
    if max_cases is not None:
        n_cases = sum(1 for entry in timeline if is_case(*entry))
        if n_cases > max_cases:
            rng = np.random.default_rng(CASE_SAMPLE_SEED)
            kept = set(rng.choice(n_cases, max_cases, replace=False).tolist())
    events: list[CaseEvent] = []
    prefixes: list[UserSequence] = []
    targets, target_types, moments = [], [], []
    case_number = -1
    for ts, n, position in timeline:
        sequence = history[n]
        case = is_case(ts, n, position)
        case_number += case
        if case and (kept is None or case_number in kept):
            prefixes.append(prefix(sequence, position))
            targets.append(sequence.item_ids[position])
            target_types.append(sequence.types[position])
            moments.append(len(events))
        events.append((sequence.user_id, sequence.item_ids[position], ts, sequence.types[position]))
    cases = NextItemCases(prefixes=prefixes, targets=targets, target_types=target_types)
    return cases, moments, events
