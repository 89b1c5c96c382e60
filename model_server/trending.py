"""Trending for the model server: the top of the decayed trending sets in Redis,
every event type counted alike, held to the items the served model knows (every
item before the first model: `model` None) and the catalogue does not mark
unavailable or deleted (docs/catalogue.md); and the last read, which /recommend
answers from while Redis does not answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Container, Iterator

from streamrec.events import EventType
from streamrec.loaded import ServedModel
from streamrec.state import StateStore

# Trending answers "what will someone with no history touch next": every event
# type counts once. Weighting purchases 5x halved its hit@20 for such users on the
# Taobao replay against the same counts unweighted (docs/models.md).
TRENDING_TYPES = tuple(EventType)
# A read takes at least this many (what an answer from the last read can offer),
# and reads on, this many times more at each step, while too few are known.
READ_MIN = 20
READ_GROWTH = 4
# Versions whose latest read is kept (the current one and an experiment's arms').
VERSIONS_KEPT = 4


def _version(model: ServedModel | None) -> str | None:
    """Whose read it is: a version, or None for the read made before any model."""
    return None if model is None else model.version


def _known(model: ServedModel | None) -> Container[str] | None:
    """The items trending may offer: the model's vocabulary; any before the first model."""
    return None if model is None else model.bundle.rows


class TrendingReader:
    def __init__(
        self,
        store: StateStore,
        max_items: int,
        available: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        self.max_items = max_items  # what the trending sets are trimmed to
        # What the catalogue says of an item (model_server/catalogue_mirror.py).
        self.available = available
        self._last: list[tuple[str, float]] | None = None
        # Per version (the current one, an experiment's arms'), its latest read:
        # (monotonic time, wanted, items by score).
        self._reads: dict[str | None, tuple[float, int, list[tuple[str, float]]]] = {}

    async def read(
        self, model: ServedModel | None, wanted: int, max_age_s: float = 0.0
    ) -> list[tuple[str, float]]:
        """At least `wanted` (when there are) items the model knows, by score; held.
        With `max_age_s`: the held read when it is younger, for this version and at
        least as deep (availability applied now)."""
        held = self.recent(model, wanted, max_age_s)
        if held is not None:
            return held
        started = time.monotonic()
        # To the next power of two: requests want a little more or less (k plus what
        # each removes), and a read as deep as the last one wanted was read again by
        # the next request that wanted one more (a filtered answer's fill: a trending
        # read per request).
        depth = 1 << (max(wanted, READ_MIN) - 1).bit_length()
        per_type = await asyncio.gather(*(self._top_of(model, t, depth) for t in TRENDING_TYPES))
        combined: dict[str, float] = {}
        for rows in per_type:
            for item_id, score in rows:
                combined[item_id] = combined.get(item_id, 0.0) + score
        self._last = sorted(combined.items(), key=lambda pair: -pair[1])
        self._reads.pop(_version(model), None)
        self._reads[_version(model)] = (started, depth, self._last)
        if len(self._reads) > VERSIONS_KEPT:
            del self._reads[next(iter(self._reads))]
        return self._offered(self._last)

    def recent(
        self, model: ServedModel | None, wanted: int, max_age_s: float
    ) -> list[tuple[str, float]] | None:
        """`read`'s answer from the held read when that one serves (younger than
        `max_age_s`, this version, deep enough), without a call; else None."""
        read = self._reads.get(_version(model))
        if read is None:
            return None
        read_at, depth, ordered = read
        if time.monotonic() - read_at < max_age_s and depth >= wanted:
            return self._offered(ordered)
        return None

    def _offered(self, ordered: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """Without what the catalogue marks unavailable now: an item out of stock or
        withdrawn leaves trending at once, one the catalogue never heard of stays
        (the catalogue is optional)."""
        if self.available is None:
            return ordered
        return [pair for pair in ordered if self.available(pair[0])]

    def held(self, model: ServedModel | None) -> Iterator[tuple[str, float]] | None:
        """The last read, held to the items `model` knows (it may have swapped since);
        None before the first read."""
        if self._last is None:
            return None
        known = _known(model)
        offered = self._offered(self._last)
        if known is None:
            return iter(offered)
        return ((item_id, score) for item_id, score in offered if item_id in known)

    async def _top_of(
        self, model: ServedModel | None, event_type: EventType, wanted: int
    ) -> list[tuple[str, float]]:
        """The top of one type's set, only items the model knows: any producer can put
        any id there (one the model never saw, NUL included), so read deeper while
        too few are known, up to the whole set. Before the first model there is no
        vocabulary to hold them to: the top as it is."""
        known = _known(model)
        read = wanted
        while True:
            rows = await self.store.trending(event_type, read)
            if known is None:
                return rows
            kept = [(item_id, score) for item_id, score in rows if item_id in known]
            if len(kept) >= wanted or len(rows) < read or read >= self.max_items:
                return kept
            read = min(read * READ_GROWTH, self.max_items)
