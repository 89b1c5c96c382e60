"""The decayed counters (item popularity, trending) against one event dated far ahead,
straight into the apply script as a worker with a wrong clock would send it: it must
not move the time origin for everyone nor freeze its item."""

from __future__ import annotations

import time

import pytest

from streamrec.events import Event, EventType
from streamrec.keys import TRENDING_EPOCH_KEY, item_popularity_key
from streamrec.state import StateStore

pytestmark = pytest.mark.integration

YEAR_2099_MS = 4_070_908_800_000


def click(n: int, item: str, ts_ms: int) -> Event:
    return Event(f"e{n}", f"user{n}", item, EventType.CLICK, ts_ms)


async def test_one_event_from_2099_neither_zeroes_trending_nor_freezes_its_item(
    store: StateStore,
) -> None:
    now_ms = int(time.time() * 1000)
    skew_ms = store.settings.max_future_skew_s * 1000
    await store.apply_events([click(1, "steady", now_ms), click(2, "steady", now_ms + 1)])
    await store.apply_events([click(3, "poison", YEAR_2099_MS)])
    later = [click(10 + n, "steady", now_ms + 1000 + n) for n in range(3)]
    later += [click(20 + n, "poison", now_ms + 1000 + n) for n in range(3)]
    await store.apply_events(later)

    raw_epoch = await store.redis.get(TRENDING_EPOCH_KEY)
    assert raw_epoch is not None
    epoch = float(raw_epoch)
    assert epoch <= now_ms + skew_ms + 60_000, "the 2099 click moved the trending epoch"
    scores = dict(await store.trending(EventType.CLICK, 10))
    assert scores["steady"] > 0, "every other item was zeroed"
    assert scores["steady"] > scores["poison"] * 0.5

    popularity = await store.read_item_popularity(["steady", "poison"], now_ms + 2000)
    steady, poison = popularity[:, 0]
    assert steady == pytest.approx(5, rel=0.01)
    # Its later clicks still count: the 2099 one was taken as at most skew ahead.
    assert poison > 3.5, f"the item's popularity froze at {poison}"
    row = await store.redis.hgetall(item_popularity_key("poison"))
    assert float(row[b"click:ref"]) <= now_ms + skew_ms + 60_000
