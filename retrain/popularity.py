"""Per-item popularity by event type, decayed by event age, as the stream keeps
it in Redis; and a user's state rebuilt from a prefix of their events. Both
feed `streamrec.features.ranking_features` offline exactly as serving does."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from retrain.data import UserSequence
from streamrec.events import Event, EventType
from streamrec.features import EVENT_TYPES, RecentEvent, UserState

_TYPE_COLUMN = {t: column for column, t in enumerate(EVENT_TYPES)}


def decayed_popularity(
    sequences: Sequence[UserSequence], now_ms: int, half_life_s: float
) -> dict[str, dict[EventType, float]]:
    rate = math.log(2) / (half_life_s * 1000)
    popularity: dict[str, dict[EventType, float]] = defaultdict(lambda: defaultdict(float))
    for sequence in sequences:
        for item_id, event_type, ts_ms in zip(
            sequence.item_ids, sequence.types, sequence.ts_ms, strict=True
        ):
            popularity[item_id][event_type] += math.exp(-rate * max(now_ms - ts_ms, 0))
    return {item_id: dict(by_type) for item_id, by_type in popularity.items()}


def last_event_ms(sequences: Sequence[UserSequence]) -> int:
    return max((s.ts_ms[-1] for s in sequences if s.ts_ms), default=0)


def user_state(
    item_ids: Sequence[str], types: Sequence[EventType], ts_ms: Sequence[int], max_recent: int = 50
) -> UserState:
    """What the Redis state would hold after these events (oldest first)."""
    recent = [
        RecentEvent(item_id, event_type, ts)
        for item_id, event_type, ts in zip(
            item_ids[-max_recent:], types[-max_recent:], ts_ms[-max_recent:], strict=True
        )
    ]
    counts: dict[str, Counter[EventType]] = defaultdict(Counter)
    purchased = set()
    for item_id, event_type in zip(item_ids, types, strict=True):
        counts[item_id][event_type] += 1
        if event_type == EventType.PURCHASE:
            purchased.add(item_id)
    return UserState(recent_events=recent, purchased=frozenset(purchased), item_counts=counts)


# Past this exponent the decayed counts are rescaled (exp(700) overflows a float).
_REBASE_EXPONENT = 500.0


class Popularity:
    """Every item's event count (all types) decayed by age, over the events observed
    so far; what each baseline fills the rest of its k from. Counts are kept
    relative to a fixed origin, so one event moves only its item's count and the
    top `keep` items stay at hand. Ties: the smaller item id first."""

    def __init__(self, half_life_s: float, keep: int = 64) -> None:
        self._rate_per_ms = math.log(2) / (half_life_s * 1000)
        self._keep = keep
        self._origin_ms: int | None = None
        self._weights: dict[str, float] = {}
        self._top: dict[str, float] = {}
        self._worst: str | None = None  # the last of the top items, while it is known
        self._ranked: list[str] | None = None

    def observe(self, event: Event) -> None:
        self.observe_at(event.item_id, event.ts_ms)

    def observe_at(self, item: str, ts_ms: int) -> None:
        if self._origin_ms is None:
            self._origin_ms = ts_ms
        exponent = self._rate_per_ms * (ts_ms - self._origin_ms)
        if exponent > _REBASE_EXPONENT:
            self._rebase(ts_ms)
            exponent = 0.0
        weight = self._weights.get(item, 0.0) + math.exp(exponent)
        self._weights[item] = weight
        if item in self._top or len(self._top) < self._keep:
            self._top[item] = weight
            self._worst = self._ranked = None
            return
        if self._worst is None:
            self._worst = max(self._top, key=lambda i: (-self._top[i], i))
        if (-weight, item) < (-self._top[self._worst], self._worst):
            del self._top[self._worst]
            self._top[item] = weight
            self._worst = self._ranked = None

    def ranked(self, n: int) -> list[str]:
        """The `n` most popular items, most popular first."""
        if n > self._keep:
            return sorted(self._weights, key=lambda i: (-self._weights[i], i))[:n]
        if self._ranked is None:
            self._ranked = sorted(self._top, key=lambda i: (-self._top[i], i))
        return self._ranked[:n]

    def fill(self, item_ids: list[str], k: int) -> list[str]:
        """`item_ids` (at most k of them) topped up to k with the most popular items
        not among them."""
        chosen = item_ids[:k]
        # The top k hold at least k - len(chosen) items that are not chosen.
        listed = set(chosen)
        for item in self.ranked(k):
            if len(chosen) == k:
                break
            if item not in listed:
                chosen.append(item)
        return chosen

    def _rebase(self, origin_ms: int) -> None:
        assert self._origin_ms is not None
        scale = math.exp(-self._rate_per_ms * (origin_ms - self._origin_ms))
        self._weights = {item: w * scale for item, w in self._weights.items()}
        self._top = {item: w * scale for item, w in self._top.items()}
        self._origin_ms = origin_ms


class ItemPopularity:
    """Per-item decayed counts by event type and the trending items, replayed event
    by event: what the stream worker's Redis holds at any moment of a training
    window, so that a training case sees popularity as serving would have (not the
    window's end). Counts are stored against one origin and decayed on read."""

    def __init__(self, half_life_s: float, trending_keep: int = 64) -> None:
        self.half_life_s = half_life_s
        self.trending = Popularity(half_life_s, keep=trending_keep)
        self._rate_per_ms = math.log(2) / (half_life_s * 1000)
        self._origin_ms: int | None = None
        self._counts: dict[str, np.ndarray] = {}
        self._first_ms: dict[str, int] = {}

    def observe(self, item_id: str, event_type: EventType, ts_ms: int) -> None:
        first = self._first_ms.get(item_id)
        if first is None or ts_ms < first:
            self._first_ms[item_id] = ts_ms
        if self._origin_ms is None:
            self._origin_ms = ts_ms
        exponent = self._rate_per_ms * (ts_ms - self._origin_ms)
        if exponent > _REBASE_EXPONENT:
            scale = math.exp(-exponent)
            self._counts = {item: row * scale for item, row in self._counts.items()}
            self._origin_ms = ts_ms
            exponent = 0.0
        row = self._counts.get(item_id)
        if row is None:
            row = self._counts[item_id] = np.zeros(len(EVENT_TYPES))
        row[_TYPE_COLUMN[event_type]] += math.exp(exponent)
        self.trending.observe_at(item_id, ts_ms)

    def rows(self, item_ids: Sequence[str], now_ms: int) -> np.ndarray:
        """(len(item_ids), len(EVENT_TYPES)) decayed to `now_ms`, as
        `features.popularity_rows` lays them out; 0 for an item never seen."""
        out = np.zeros((len(item_ids), len(EVENT_TYPES)))
        if self._origin_ms is None:
            return out
        for n, item_id in enumerate(item_ids):
            row = self._counts.get(item_id)
            if row is not None:
                out[n] = row
        return out * math.exp(-self._rate_per_ms * (now_ms - self._origin_ms))

    def first_seen(self, item_ids: Sequence[str]) -> np.ndarray:
        """Each item's first event time (ms) so far, 0 for one never seen: what the
        stream keeps beside its popularity (`state.first_seen`)."""
        return np.array([self._first_ms.get(i, 0) for i in item_ids], dtype=np.float64)


class CategoryPopularity:
    """Per category, its items' event counts (all types) decayed by age, as the
    stream worker keeps them in Redis (`streamrec/state.py`): each event counts
    once in every category the catalogue gives its item."""

    def __init__(
        self, categories: Mapping[str, Sequence[str]], half_life_s: float, keep: int = 100
    ) -> None:
        self._categories = categories
        self._half_life_s = half_life_s
        self._keep = keep
        self._by_category: dict[str, Popularity] = {}

    def observe(self, item_id: str, ts_ms: int) -> None:
        for category in self._categories.get(item_id, ()):
            popularity = self._by_category.get(category)
            if popularity is None:
                popularity = Popularity(self._half_life_s, keep=self._keep)
                self._by_category[category] = popularity
            popularity.observe_at(item_id, ts_ms)

    def of_item(self, item_id: str, n: int) -> list[list[str]]:
        """Per category of `item_id`, its `n` most popular items."""
        return [
            self._by_category[c].ranked(n)
            for c in self._categories.get(item_id, ())
            if c in self._by_category
        ]
