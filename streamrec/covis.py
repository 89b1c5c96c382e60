"""Item-to-item co-visitation: which items people touch next to which, kept in real
time. The rule every copy follows (the Redis apply script in `streamrec/state.py`
and `CovisTable` here, which training replays), and how a user's neighbours are
scored from it (`covis_scores`, serving and training both).

When a user touches item i, each of the user's `window` latest distinct earlier
items j (d = 1 for the latest) gains weight 1/d on the link j -> i and
`backward`/d on i -> j. Weights decay with event time (half-life); each item keeps
its `max_neighbours` strongest links. A score is stored as w * 2^((ts - epoch) /
half-life) against the item's own epoch, moved forward (and the scores scaled down)
once the exponent passes `REBASE_HALF_LIVES`, as trending does.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

REBASE_HALF_LIVES = 64


@dataclass(frozen=True)
class CovisRule:
    window: int = 5  # earlier distinct items of the user linked with each event
    max_neighbours: int = 50  # links kept per item (the strongest)
    half_life_s: float = 3 * 24 * 3600
    backward: float = 0.5  # weight of i -> j against j -> i (earlier -> later is 1)

    @property
    def half_life_ms(self) -> int:
        return int(self.half_life_s * 1000)


@dataclass
class _Links:
    epoch_ms: int
    scores: dict[str, float] = field(default_factory=dict)


class CovisTable:
    """The Redis co-visitation keys, in memory: what training replays so that every
    training case sees the table as it was at that moment (no later event)."""

    def __init__(self, rule: CovisRule) -> None:
        self.rule = rule
        self._links: dict[str, _Links] = {}
        self._user_items: dict[str, dict[str, int]] = {}  # user -> item -> latest ts

    def apply(self, user_id: str, item_id: str, ts_ms: int) -> None:
        items = self._user_items.setdefault(user_id, {})
        earlier = sorted(
            ((ts, other) for other, ts in items.items() if ts <= ts_ms and other != item_id),
            reverse=True,
        )[: self.rule.window]
        for d, (_, other) in enumerate(earlier, start=1):
            self._add(other, item_id, 1.0 / d, ts_ms)
            if self.rule.backward > 0:
                self._add(item_id, other, self.rule.backward / d, ts_ms)
        if items.get(item_id, -1) < ts_ms:
            items[item_id] = ts_ms

    def _add(self, item_id: str, neighbour: str, weight: float, ts_ms: int) -> None:
        links = self._links.get(item_id)
        if links is None:
            links = self._links[item_id] = _Links(ts_ms)
        exponent = (ts_ms - links.epoch_ms) / self.rule.half_life_ms
        if exponent > REBASE_HALF_LIVES:
            shift = math.floor(exponent / REBASE_HALF_LIVES) * REBASE_HALF_LIVES
            scale = math.pow(2, -shift)
            links.scores = {n: s * scale for n, s in links.scores.items()}
            links.epoch_ms += int(shift * self.rule.half_life_ms)
            exponent -= shift
        links.scores[neighbour] = links.scores.get(neighbour, 0.0) + weight * math.pow(2, exponent)
        excess = len(links.scores) - self.rule.max_neighbours
        if excess > 0:
            # Redis drops the lowest scores first, ties by member order.
            for name, _ in sorted(links.scores.items(), key=lambda p: (p[1], p[0]))[:excess]:
                del links.scores[name]

    def neighbours(self, item_id: str) -> tuple[dict[str, float], int]:
        """(stored scores, epoch ms) of one item, as the Redis read returns them."""
        links = self._links.get(item_id)
        return ({}, 0) if links is None else (dict(links.scores), links.epoch_ms)

    def stored(self) -> dict[str, tuple[dict[str, float], int]]:
        return {item: (dict(links.scores), links.epoch_ms) for item, links in self._links.items()}


def latest_distinct(item_ids: Sequence[str], limit: int) -> list[str]:
    """The last `limit` distinct items of an oldest-first list, latest first."""
    out: list[str] = []
    seen: set[str] = set()
    if limit <= 0:
        return out
    for item_id in reversed(item_ids):
        if item_id not in seen:
            seen.add(item_id)
            out.append(item_id)
            if len(out) == limit:
                break
    return out


def covis_scores(
    neighbour_lists: Sequence[tuple[Mapping[str, float], int]],
    now_ms: int,
    half_life_s: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """(score over the user's items, score from the latest item alone) of every
    neighbour, decayed to `now_ms`. `neighbour_lists` holds (stored scores, epoch)
    of the user's latest distinct items, latest first; the d-th counts 1/d. The
    first is ordered strongest first (ties by item id), as the candidates and the
    ranking features take them: sorted once here, not by each of them."""
    total: dict[str, float] = {}
    latest: dict[str, float] = {}
    half_life_ms = half_life_s * 1000
    for d, (stored, epoch_ms) in enumerate(neighbour_lists, start=1):
        scale = math.pow(2, (epoch_ms - now_ms) / half_life_ms) / d
        for item_id, value in stored.items():
            total[item_id] = total.get(item_id, 0.0) + value * scale
        if d == 1:
            latest = {item_id: value * scale for item_id, value in stored.items()}
    # (-score, id) pairs sort strongest first, ties by id, without a key function
    # called per neighbour (~5 of ~65 us with ~150 of them).
    ranked = sorted(zip(map(operator.neg, total.values()), total, strict=True))
    return {item_id: -negated for negated, item_id in ranked}, latest
