"""The in-process popularity table gives the rows a Redis read would, after new
events too (read from the change log), and nothing for a version whose vocabulary
it does not hold."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench.scenarios.models import publish
from bench.scenarios.users import apply, events_for
from model_server.popularity import CHUNK_ITEMS, PopularityTable
from streamrec.events import EventType
from streamrec.loaded import open_model
from streamrec.state import StateStore
from tests.model_server.conftest import Served

pytestmark = pytest.mark.integration


async def test_the_table_matches_a_redis_read_and_knows_its_version(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = served.items
    await apply(served.settings, events_for("a", items[:6]))
    await apply(served.settings, events_for("b", items[3:9], EventType.PURCHASE))
    monkeypatch.setattr("model_server.popularity.CHUNK_ITEMS", 4)  # several chunks
    assert CHUNK_ITEMS > 4
    model = open_model(served.root, served.first.version)
    store = StateStore(served.settings)
    try:
        table = PopularityTable(store, 1.0, served.settings.popularity_half_life_s)
        await table.refresh(model)
        wanted = items[:12]
        rows = np.array([model.bundle.rows[i] for i in wanted])
        now_ms = int(time.time() * 1000) + 3_600_000
        held = table.rows(model, rows, now_ms)
        assert held is not None
        assert np.allclose(held, await store.read_item_popularity(wanted, now_ms), rtol=1e-12)
        assert held[:9].any(axis=1).all() and not held[9:].any()
        # New events: the next refresh reads only what changed, and matches Redis.
        await apply(served.settings, events_for("c", items[8:11], EventType.PURCHASE))
        before = table._snapshot
        await table.refresh(model)
        assert table._snapshot is not None and before is not None
        assert table._snapshot.full_at_s == before.full_at_s  # not a full read
        held = table.rows(model, rows, now_ms)
        assert held is not None
        assert np.allclose(held, await store.read_item_popularity(wanted, now_ms), rtol=1e-12)
        assert held[:11].any(axis=1).all() and not held[11:].any()
        second = publish(served.models, served.root, parent=served.first.version)
        swapped_in = open_model(served.root, second.version)
        assert table.rows(swapped_in, rows, now_ms) is None  # until the next refresh
        # The refresh carries the rows over to the new version's vocabulary.
        await table.refresh(swapped_in)
        assert table._snapshot is not None and table._snapshot.full_at_s == before.full_at_s
        carried = table.rows(swapped_in, rows, now_ms)
        assert carried is not None
        assert np.allclose(carried, await store.read_item_popularity(wanted, now_ms), rtol=1e-12)
        empty = PopularityTable(store, 1.0, served.settings.popularity_half_life_s)
        assert empty.rows(model, rows, now_ms) is None
    finally:
        await store.close()


async def test_a_prepared_version_reads_from_memory_as_soon_as_it_swaps_in(
    served: Served,
) -> None:
    items = served.items
    await apply(served.settings, events_for("d", items[:6]))
    model = open_model(served.root, served.first.version)
    store = StateStore(served.settings)
    try:
        table = PopularityTable(store, 1.0, served.settings.popularity_half_life_s)
        await table.refresh(model)
        second = publish(served.models, served.root, parent=served.first.version)
        incoming = open_model(served.root, second.version)
        await table.prepare(incoming)  # what ModelHolder.before_swap awaits
        wanted = items[:12]
        rows = np.array([incoming.bundle.rows[i] for i in wanted])
        now_ms = int(time.time() * 1000)
        # Both answer from memory: the version still serving, and the one swapping in.
        assert (
            table.rows(model, np.array([model.bundle.rows[i] for i in wanted]), now_ms) is not None
        )
        carried = table.rows(incoming, rows, now_ms)
        assert carried is not None
        assert np.allclose(carried, await store.read_item_popularity(wanted, now_ms), rtol=1e-12)
        # Events between preparing and the first refresh on the new version are read then.
        await apply(served.settings, events_for("e", items[6:11], EventType.PURCHASE))
        await table.refresh(incoming)
        assert table._incoming is None
        held = table.rows(incoming, rows, now_ms)
        assert held is not None
        assert np.allclose(held, await store.read_item_popularity(wanted, now_ms), rtol=1e-12)
        assert held[:11].any(axis=1).all() and not held[11:].any()
    finally:
        await store.close()
