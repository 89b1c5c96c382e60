"""The server's one-command popularity read agrees with the state store's own reader."""

from __future__ import annotations

import time

import pytest

from model_server.popularity import PopularityReader
from streamrec.events import EventType
from streamrec.state import StateStore
from tests.model_server.conftest import Served, apply, events_for

pytestmark = pytest.mark.integration


async def test_matches_state_store_read_item_popularity(served: Served) -> None:
    items = served.items[:6]
    await apply(served.settings, events_for("u1", items[:4]))
    await apply(served.settings, events_for("u2", items[2:5], EventType.PURCHASE))
    store = StateStore(served.settings)
    try:
        now_ms = int(time.time() * 1000) + 60_000
        asked = [*items, "never-seen"]
        expected = await store.read_item_popularity(asked, now_ms)
        got = await PopularityReader(store).read(asked, now_ms)
        assert await PopularityReader(store).read([], now_ms) == []
    finally:
        await store.close()
    assert got == expected
    assert got[-1].by_type == {} and got[3].by_type.keys() == {"click", "purchase"}
