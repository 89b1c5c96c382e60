"""Each serving process's copy of the catalogue: every item's record, followed from
the catalogue's change log (`Catalogue.changes_since`) every `serve_catalogue_poll_s`,
so that a request checks availability, categories, prices and attributes in
memory instead of a catalogue script call per request (the largest cost of a
ranked request with a catalogue: docs/decisions.md).

The categories' most popular lists (the stream worker's decayed counts) are read
from Redis the first time a category is asked about, then renewed in the
background every `serve_popularity_refresh_s`, all the categories requests asked
about since in one call, so a request finds them held instead of waiting for a
read (a read on the request path was a sixth of requests' at 250 req/s, each a
Redis round trip); a list no request asked for is let go stale and read again
when one does. Availability is applied to them from the mirror at every request,
so an item out of stock leaves them as soon as the mirror reads its record.

A request with a filter needs the catalogue: when the mirror has not reached the
end of the log for longer than `serve_catalogue_max_lag_s` (Redis does not
answer), it is refused (`CatalogueBehind`, a 503), never answered unchecked. An
answer without a filter is checked against the mirror as last read.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import TypeVar

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from model_server.polling import Polling
from streamrec.catalogue import Catalogue, CatalogueItem

V = TypeVar("V")

# Changes read per Redis call; a catch-up reads on until none are left.
READ_BATCH = 1000
# Changes held for the live items to read on from (model_server/live_items.py).
CHANGES_HELD = 100_000
# Categories whose most popular list is held; the oldest read leaves first.
POPULAR_HELD = 4096
# A held list serves requests for this many refresh intervals: the background
# renewal comes every interval, so a list asked about never goes stale while Redis
# answers; one no longer renewed (Redis does not answer) is read by the request.
HELD_FOR_REFRESHES = 2


class CatalogueBehind(RedisTimeoutError):
    """The mirror has not read the catalogue's change log for too long to check a
    filter against it."""


class CatalogueMirror:
    def __init__(
        self, catalogue: Catalogue, poll_s: float, max_lag_s: float, popular_refresh_s: float
    ) -> None:
        self.catalogue = catalogue
        self.max_lag_s = max_lag_s
        self.popular_refresh_s = popular_refresh_s
        # Every item with a live record; a deleted one leaves.
        self.records: dict[str, CatalogueItem] = {}
        # Of them, those out of stock: what a request removes from its candidates.
        self.unavailable: set[str] = set()
        # Each item's categories and price (an item without either is absent), as
        # `features.UserState` takes them: plain dicts, kept with the records (the
        # ranking features look up every candidate in each; a view reading through
        # the records cost 1.3 ms of a 4.6 ms request: docs/decisions.md).
        self.categories_of: dict[str, tuple[str, ...]] = {}
        self.prices_of: dict[str, float] = {}
        self.seq = 0  # the change read up to
        # The latest changes read, oldest first: (change number, item id); complete
        # after change `_held_from` (older ones were let go).
        self._changes: deque[tuple[int, str]] = deque()
        self._held_from = 0
        # Monotonic time at which the last catch-up that reached the log's end began.
        self._synced_at = -float("inf")
        # Per category: (monotonic read time, depth read, its most popular items).
        self._popular: dict[str, tuple[float, int, list[str]]] = {}
        # What `_offered` made of a held list, per (category, n, depth): kept while the
        # list and the catalogue (`seq`) are the ones it was made from. Requests ask
        # for the same few categories' lists many times a second, and checking each
        # item's record again was a twentieth of a filtered answer's CPU.
        self._offered_held: dict[tuple[str, int, int], tuple[float, int, list[str]]] = {}
        # The categories requests asked about since the last renewal, each with the
        # deepest read asked; and when that renewal was.
        self._asked: dict[str, int] = {}
        self._renewed_at = -float("inf")
        self._polling = Polling(poll_s, "catalogue mirror: following the catalogue")

    async def catch_up(self) -> int:
        """Read every change past `seq`; returns how many items changed."""
        started = time.monotonic()
        changed = 0
        while True:
            changes = await self.catalogue.changes_since(self.seq, READ_BATCH)
            if changes:
                item_ids = [item_id for item_id, _ in changes]
                found = await self.catalogue.items(item_ids)
                for item_id, record in zip(item_ids, found, strict=True):
                    # A record newer than its change (applied since) is read now and
                    # again at its own change: never an older one over a newer.
                    if record is None or record.deleted:
                        self.records.pop(item_id, None)
                        self.unavailable.discard(item_id)
                        self.categories_of.pop(item_id, None)
                        self.prices_of.pop(item_id, None)
                        continue
                    self.records[item_id] = record
                    _keep(self.categories_of, item_id, record.categories or None)
                    _keep(self.prices_of, item_id, record.price)
                    if record.available:
                        self.unavailable.discard(item_id)
                    else:
                        self.unavailable.add(item_id)
                self.seq = changes[-1][1]
                self._changes.extend((seq, item_id) for item_id, seq in changes)
                while len(self._changes) > CHANGES_HELD:
                    self._held_from = self._changes.popleft()[0]
                changed += len(changes)
            if len(changes) < READ_BATCH:
                self._synced_at = started
                return changed

    async def poll(self) -> None:
        """One step of `follow`: the changes, then the popular lists when due."""
        await self.catch_up()
        await self.renew_popular()

    async def renew_popular(self) -> None:
        """Re-read, in one call, the popular lists of the categories requests asked
        about since the last renewal, once per `popular_refresh_s`."""
        now = time.monotonic()
        if now - self._renewed_at < self.popular_refresh_s:
            return
        self._renewed_at = now
        asked, self._asked = self._asked, {}
        if asked:
            depth = max(asked.values())
            lists = await self.catalogue.popular(list(asked), depth)
            self._hold_lists(list(asked), depth, lists, now)

    async def follow(self) -> None:
        """Poll every `poll_s` until `stop()`; a Redis outage is logged and the
        next poll reads on from where this one stopped."""
        await self._polling.run(self.poll, (RedisError,))

    def stop(self) -> None:
        self._polling.stop()

    @property
    def lag_s(self) -> float:
        """How long ago the mirror last held everything the log held (inf: never)."""
        return time.monotonic() - self._synced_at

    def check_current(self) -> None:
        """Raise `CatalogueBehind` when the mirror is too far behind to check a filter."""
        lag_s = self.lag_s
        if lag_s > self.max_lag_s:
            said = "never read" if lag_s == float("inf") else f"last read {lag_s:.1f} s ago"
            raise CatalogueBehind(f"the catalogue was {said}: a filter cannot be checked")

    def changed_since(self, seq: int) -> list[str] | None:
        """The items whose records changed after change `seq`, as far as read, oldest
        first; None when the changes held no longer reach back that far (then every
        record may have)."""
        if seq < self._held_from:
            return None
        # From the newest back: callers ask for the last few changes of up to
        # `CHANGES_HELD` (a scan of them all, every live-items poll, was most of an
        # idle server's CPU).
        newer: list[str] = []
        for number, item_id in reversed(self._changes):
            if number <= seq:
                break
            newer.append(item_id)
        newer.reverse()
        return newer

    def record(self, item_id: str) -> CatalogueItem | None:
        """The item's record; None when the catalogue has none (or it was deleted)."""
        return self.records.get(item_id)

    def available(self, item_id: str) -> bool:
        """False for an item the catalogue marks unavailable; an item it does not
        know counts as available (the catalogue is optional). A deleted item is
        unknown here: its id left every list it was in when the delete was applied
        (docs/catalogue.md)."""
        record = self.records.get(item_id)
        return record is None or record.available

    def categories(self, item_id: str) -> tuple[str, ...]:
        record = self.records.get(item_id)
        return () if record is None else record.categories

    async def popular(self, categories: Sequence[str], n: int, depth: int) -> list[list[str]]:
        """Per category up to `n` of its most popular items that are available now,
        most popular first, from the top `depth` of its list: the held lists while
        fresh (`held_popular`), the others read in one round trip."""
        fresh = self.held_popular(categories, n, depth)
        if fresh is not None:
            return fresh
        now = time.monotonic()
        stale = [
            category
            for category in dict.fromkeys(categories)
            if not self._fresh(self._popular.get(category), depth, now)
        ]
        if stale:
            self._hold_lists(stale, depth, await self.catalogue.popular(stale, depth), now)
        answer: list[list[str]] = []
        for category in categories:
            held = self._popular.get(category)
            answer.append(self._offered_from(held, category, n, depth) if held is not None else [])
        return answer

    def held_popular(self, categories: Sequence[str], n: int, depth: int) -> list[list[str]] | None:
        """`popular`'s answer when every category's list is held fresh and deep
        enough, without a call; else None."""
        now = time.monotonic()
        answer: list[list[str]] = []
        asked = self._asked
        for category in categories:
            held = self._popular.get(category)
            if held is None or not self._fresh(held, depth, now):
                return None
            if asked.get(category, 0) < depth:
                asked[category] = depth
            answer.append(self._offered_from(held, category, n, depth))
        return answer

    def _fresh(self, held: tuple[float, int, list[str]] | None, depth: int, now: float) -> bool:
        """Whether a held list may answer a request wanting `depth` of it."""
        return (
            held is not None
            and held[1] >= depth
            and now - held[0] < self.popular_refresh_s * HELD_FOR_REFRESHES
        )

    def _hold_lists(
        self, categories: list[str], depth: int, lists: list[list[str]], read_at: float
    ) -> None:
        for category, items in zip(categories, lists, strict=True):
            self._popular.pop(category, None)
            self._popular[category] = (read_at, depth, items)
        while len(self._popular) > POPULAR_HELD:
            del self._popular[next(iter(self._popular))]

    def _offered_from(
        self, held: tuple[float, int, list[str]], category: str, n: int, depth: int
    ) -> list[str]:
        """`_offered` of a held list's top `depth`, made once per list and catalogue
        change (callers never change the list they get)."""
        key = (category, n, depth)
        made = self._offered_held.get(key)
        if made is not None and made[0] == held[0] and made[1] == self.seq:
            return made[2]
        offered = self._offered(held[2][:depth], category, n)
        if len(self._offered_held) >= 4 * POPULAR_HELD:
            self._offered_held.clear()
        self._offered_held[key] = (held[0], self.seq, offered)
        return offered

    def _offered(self, items: list[str], category: str, n: int) -> list[str]:
        """The first `n` of `items` available now and still in `category`."""
        records = self.records
        offered: list[str] = []
        if n <= 0:
            return offered
        for item_id in items:
            record = records.get(item_id)
            if record is not None and record.available and category in record.categories:
                offered.append(item_id)
                if len(offered) == n:
                    break
        return offered


def _keep(held: dict[str, V], item_id: str, value: V | None) -> None:
    """`held[item_id] = value`, or the item absent when it has none."""
    if value is None:
        held.pop(item_id, None)
    else:
        held[item_id] = value
