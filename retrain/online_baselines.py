"""Online baselines for the prequential replay: the heuristics a practitioner
writes in an afternoon (latest items, item co-occurrence, V-SKNN, and blends of
the first two), each updated event by event and topped up from popularity."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from retrain.popularity import CategoryPopularity, Popularity
from streamrec.events import Event


class Baseline(Protocol):
    def recommend(self, user_id: str, k: int) -> list[str]: ...

    def observe(self, event: Event) -> None: ...


class UserItems:
    """Each user's distinct items, the most recently touched last."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, None]] = defaultdict(dict)

    def touch(self, user_id: str, item_id: str) -> None:
        items = self._items[user_id]
        items.pop(item_id, None)
        items[item_id] = None

    def latest(self, user_id: str, n: int) -> list[str]:
        """The user's last `n` distinct items, latest first."""
        items = self._items.get(user_id)
        return list(itertools.islice(reversed(items), n)) if items else []


class Latest:
    """The user's distinct items, latest first."""

    def __init__(self, half_life_s: float) -> None:
        self.popularity = Popularity(half_life_s)
        self.users = UserItems()

    def observe(self, event: Event) -> None:
        self.popularity.observe(event)
        self.users.touch(event.user_id, event.item_id)

    def recommend(self, user_id: str, k: int) -> list[str]:
        return self.popularity.fill(self.users.latest(user_id, k), k)


Weighting = Literal["same", "div", "linear"]
_WEIGHTS: dict[str, Callable[[int], float]] = {
    "same": lambda rank: 1.0,
    "div": lambda rank: 1.0 / rank,
    "linear": lambda rank: 1.0 - 0.1 * (rank - 1),
}


class Cooc:
    """Item-to-item co-occurrence, counted online: when a user touches item i, each
    of their previous last `window` distinct items j (j ≠ i) gains one with i
    and i one with j. A candidate scores the sum of its counts with the user's
    last `window` distinct items, the r-th latest weighted by `weighting`
    ("div": 1/r). The user's own items are candidates too. Ties: the item
    linked to the user's more recent item first."""

    def __init__(self, half_life_s: float, window: int = 5, weighting: Weighting = "div") -> None:
        self.popularity = Popularity(half_life_s)
        self.users = UserItems()
        self.window = window
        self._weight = _WEIGHTS[weighting]
        self._counts: dict[str, Counter[str]] = defaultdict(Counter)

    def observe(self, event: Event) -> None:
        self.popularity.observe(event)
        item = event.item_id
        for other in self.users.latest(event.user_id, self.window):
            if other != item:
                self._counts[other][item] += 1
                self._counts[item][other] += 1
        self.users.touch(event.user_id, item)

    def neighbours(self, item_id: str, n: int) -> list[str]:
        """The `n` items counted most often with `item_id` (ties: the first counted)."""
        return [item for item, _ in self._counts.get(item_id, Counter()).most_common(n)]

    def scores(self, user_id: str) -> dict[str, float]:
        scores: dict[str, float] = {}
        for rank, item in enumerate(self.users.latest(user_id, self.window), start=1):
            weight = self._weight(rank)
            for other, count in self._counts.get(item, {}).items():
                scores[other] = scores.get(other, 0.0) + weight * count
        return scores

    def recommend(self, user_id: str, k: int) -> list[str]:
        scores = self.scores(user_id)
        return self.popularity.fill(heapq.nlargest(k, scores, key=scores.__getitem__), k)


Blend = Literal["latest-first", "cooc-first", "sum"]


def _extend(listed: dict[str, None], items: Iterable[str], k: int) -> None:
    """Add `items` in order to `listed` (an ordered set) until it holds `k`."""
    for item in items:
        if len(listed) >= k:
            return
        listed.setdefault(item)


class LatestCooc(Cooc):
    """The user's latest items and co-occurrence in one list: `latest-first` (own
    items latest first, then co-occurrence), `cooc-first` (the other way), or
    `sum` (co-occurrence score over the user's best one, plus 1/r for the r-th
    latest own item)."""

    def __init__(self, half_life_s: float, blend: Blend) -> None:
        super().__init__(half_life_s)
        self.blend = blend

    def recommend(self, user_id: str, k: int) -> list[str]:
        scores = self.scores(user_id)
        own = self.users.latest(user_id, k)
        if self.blend == "sum":
            top = max(scores.values(), default=1.0)
            summed = {item: score / top for item, score in scores.items()}
            for rank, item in enumerate(own, start=1):
                summed[item] = summed.get(item, 0.0) + 1.0 / rank
            return self.popularity.fill(heapq.nlargest(k, summed, key=summed.__getitem__), k)
        cooc = heapq.nlargest(k, scores, key=scores.__getitem__)
        first, then = (own, cooc) if self.blend == "latest-first" else (cooc, own)
        listed = dict.fromkeys(first)
        _extend(listed, then, k)
        return self.popularity.fill(list(listed), k)


class LatestCategoryCooc(LatestCooc):
    """The user's latest items, then the most popular items (decayed counts) of the
    latest item's category, then co-occurrence: a shop's "recently viewed", "popular
    in this category" and "viewed together" strips in one list. The categories are
    what the events themselves carry (a Taobao row's `category_id`), so only items
    seen before are known; without categories this is `latest+cooc`."""

    def __init__(self, half_life_s: float) -> None:
        super().__init__(half_life_s, "latest-first")
        self._categories: dict[str, tuple[str, ...]] = {}
        self.by_category = CategoryPopularity(self._categories, half_life_s, keep=64)

    def observe(self, event: Event) -> None:
        category = (event.context or {}).get("category_id")
        if category is not None:
            self._categories[event.item_id] = (str(category),)
        self.by_category.observe(event.item_id, event.ts_ms)
        super().observe(event)

    def recommend(self, user_id: str, k: int) -> list[str]:
        own = self.users.latest(user_id, k)
        listed = dict.fromkeys(own)
        if own:
            for items in self.by_category.of_item(own[0], k):
                _extend(listed, items, k)
        scores = self.scores(user_id)
        _extend(listed, heapq.nlargest(k, scores, key=scores.__getitem__), k)
        return self.popularity.fill(list(listed), k)


class VSKNN:
    """V-SKNN as session-rec's `VMContextKNN` (algorithms/knn/vsknn.py) with its
    defaults: similarity `vec` with the linear position weights `div` (the p-th
    of the session's n events weighs p/n), neighbours among the `sample_size`
    most recent sessions sharing an item with the current one (recent = latest
    event), the `k` most similar kept; an item scores the sum of its neighbours'
    similarities, each divided by how far back (in events) the current
    session's latest item shared with that neighbour lies (`div_score`); the
    session's own items are not removed (`remind`). Online: a user's whole
    history is their session, and each observed event extends it."""

    def __init__(self, half_life_s: float, k: int = 100, sample_size: int = 500) -> None:
        self.popularity = Popularity(half_life_s)
        self.k = k
        self.sample_size = sample_size
        self._sessions: dict[str, list[str]] = {}  # user → items in event order, repeats kept
        self._distinct: dict[str, dict[str, None]] = {}  # user → distinct items
        self._sessions_with: dict[str, set[str]] = {}  # item → users who touched it
        self._last_seen: dict[str, int] = {}  # user → order of their latest event
        self._observed = itertools.count()

    def observe(self, event: Event) -> None:
        self.popularity.observe(event)
        user, item = event.user_id, event.item_id
        self._sessions.setdefault(user, []).append(item)
        self._distinct.setdefault(user, {})[item] = None
        self._sessions_with.setdefault(item, set()).add(user)
        self._last_seen[user] = next(self._observed)

    def recommend(self, user_id: str, k: int) -> list[str]:
        session = self._sessions.get(user_id)
        if not session:
            return self.popularity.fill([], k)
        scores: dict[str, float] = {}
        for similarity, _, other in self._neighbours(user_id, session):
            items = self._distinct[other]
            steps_back = next(
                step for step, item in enumerate(reversed(session), start=1) if item in items
            )
            weight = similarity / steps_back
            for item in items:
                scores[item] = scores.get(item, 0.0) + weight
        return self.popularity.fill(heapq.nlargest(k, scores, key=scores.__getitem__), k)

    def _neighbours(self, user_id: str, session: list[str]) -> list[tuple[float, int, str]]:
        """(similarity, recency, user) of the `k` most similar sampled sessions."""
        candidates = set().union(*(self._sessions_with[item] for item in set(session)))
        candidates.discard(user_id)
        sample: list[str] | set[str] = candidates
        if len(candidates) > self.sample_size:
            sample = heapq.nlargest(self.sample_size, candidates, key=self._last_seen.__getitem__)
        # A later repeat of an item moves it to its later position, as in session-rec.
        position = {item: p / len(session) for p, item in enumerate(session, start=1)}
        similar = []
        for other in sample:
            items = self._distinct[other]
            shared = sum(weight for item, weight in position.items() if item in items)
            similar.append((shared / len(position), self._last_seen[other], other))
        # Ties: the more recent session first.
        return heapq.nlargest(self.k, similar)


@dataclass(frozen=True)
class BaselineSpec:
    name: str
    label: str
    build: Callable[[float], Baseline]  # from the popularity half-life in seconds


BASELINES = {
    spec.name: spec
    for spec in (
        BaselineSpec("latest", "the user's latest items", Latest),
        BaselineSpec("cooc", "item co-occurrence", Cooc),
        BaselineSpec("vsknn", "V-SKNN", VSKNN),
        BaselineSpec(
            "latest+cooc",
            "latest items, then co-occurrence",
            lambda half_life_s: LatestCooc(half_life_s, "latest-first"),
        ),
        BaselineSpec(
            "cooc+latest",
            "co-occurrence, then latest items",
            lambda half_life_s: LatestCooc(half_life_s, "cooc-first"),
        ),
        BaselineSpec(
            "latest+cooc:sum",
            "co-occurrence + latest-item score",
            lambda half_life_s: LatestCooc(half_life_s, "sum"),
        ),
        BaselineSpec(
            "latest+category+cooc",
            "latest items, popular in the latest item's category, then co-occurrence",
            LatestCategoryCooc,
        ),
    )
}
BLENDS = ("latest+cooc", "cooc+latest", "latest+cooc:sum")  # (a)+(b) of issue 12
