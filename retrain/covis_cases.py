"""Training cases in event-time order, each with the co-visitation table as the live
one held it just before the case's next event: the stream worker's table replayed
(`streamrec.covis.CovisTable`, the apply script's twin), never a later event."""

from __future__ import annotations

from collections.abc import Sequence

from retrain.data import NextItemCases, UserSequence
from retrain.holdout import prefix
from streamrec.covis import CovisRule, CovisTable, covis_scores, latest_distinct

CovisEvent = tuple[str, str, int]  # user, item, ts ms


class CaseCovis:
    """Replays `events` (in time order) into a table as far as each case asks."""

    def __init__(self, rule: CovisRule, read_items: int, events: Sequence[CovisEvent]) -> None:
        self.rule = rule
        self.read_items = read_items
        self.events = events
        self.table = CovisTable(rule)
        self.applied = 0

    def at(
        self, moment: int, prefix_items: Sequence[str], now_ms: int
    ) -> tuple[dict[str, float], dict[str, float]]:
        """(over the user's latest items, from the latest alone) once the first
        `moment` events are in the table; moments must not go back."""
        if moment < self.applied:
            raise ValueError(f"case moments go back: {moment} after {self.applied}")
        for user_id, item_id, ts_ms in self.events[self.applied : moment]:
            self.table.apply(user_id, item_id, ts_ms)
        self.applied = moment
        if self.read_items <= 0:
            return {}, {}
        lists = [self.table.neighbours(i) for i in latest_distinct(prefix_items, self.read_items)]
        return covis_scores(lists, now_ms, self.rule.half_life_s)


def time_ordered_cases(
    history: Sequence[UserSequence],
    case_sequences: Sequence[UserSequence],
    from_ms: int | None = None,
    until_ms: int | None = None,
) -> tuple[NextItemCases, list[int], list[CovisEvent]]:
    """Every next-item case of `case_sequences` (which are among `history`) whose
    next event lies in [from_ms, until_ms), ordered by the time of that event; per
    case how many of the returned events (all of `history`, in time order) came
    before it."""
    low = -(2**63) if from_ms is None else from_ms
    high = 2**63 - 1 if until_ms is None else until_ms
    wanted = {id(sequence) for sequence in case_sequences}
    timeline = sorted(
        (ts, n, position)
        for n, sequence in enumerate(history)
        for position, ts in enumerate(sequence.ts_ms)
    )
    events: list[CovisEvent] = []
    prefixes: list[UserSequence] = []
    targets, target_types, moments = [], [], []
    for ts, n, position in timeline:
        sequence = history[n]
        if position > 0 and low <= ts < high and id(sequence) in wanted:
            prefixes.append(prefix(sequence, position))
            targets.append(sequence.item_ids[position])
            target_types.append(sequence.types[position])
            moments.append(len(events))
        events.append((sequence.user_id, sequence.item_ids[position], sequence.ts_ms[position]))
    cases = NextItemCases(prefixes=prefixes, targets=targets, target_types=target_types)
    return cases, moments, events
