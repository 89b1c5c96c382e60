"""Popularity within each category, kept by the event apply script from the
catalogue's records (real Redis), against its training twin
(`retrain.popularity.CategoryPopularity`), and what serving reads of it."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest

from model_server.catalogue_mirror import CatalogueMirror
from retrain.popularity import CategoryPopularity
from streamrec.catalogue import Catalogue
from streamrec.events import Event, EventType
from streamrec.features import category_candidates
from streamrec.items import ItemRecord
from streamrec.keys import category_popular_key
from streamrec.settings import Settings
from streamrec.state import StateStore

HOUR_MS = 3600 * 1000


@pytest.fixture
async def opened(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[StateStore, Catalogue]]:
    settings = make_settings("category-pop", category_popular_max=5)
    store = StateStore(settings)
    catalogue = Catalogue(settings, client=store.redis)
    await store.redis.flushdb()
    yield store, catalogue
    await store.redis.flushdb()
    await store.close()


async def mirrored(catalogue: Catalogue) -> CatalogueMirror:
    """What a server process holds of the catalogue, read now (lists re-read each call)."""
    mirror = CatalogueMirror(catalogue, poll_s=1.0, max_lag_s=1.0, popular_refresh_s=0.0)
    await mirror.catch_up()
    return mirror


def click(n: int, user: str, item: str, ts_ms: int) -> Event:
    return Event(f"e{n}", user, item, EventType.CLICK, ts_ms)


async def popular(catalogue: Catalogue, category: str) -> list[str]:
    # The stubs type every reply as bytes or str; this client does not decode.
    members = cast(
        list[bytes], await catalogue.redis.zrevrange(category_popular_key(category), 0, -1)
    )
    return [m.decode() for m in members]


async def test_each_event_counts_in_every_category_of_its_item_and_nowhere_else(
    opened: tuple[StateStore, Catalogue],
) -> None:
    store, catalogue = opened
    await catalogue.apply_records_each(
        [
            ItemRecord("boot", 1, categories=("shoes", "sale")),
            ItemRecord("sandal", 1, categories=("shoes",)),
        ]
    )
    now = 1_000 * HOUR_MS
    events = [
        click(1, "u1", "boot", now),
        click(2, "u2", "sandal", now + 1),
        click(3, "u3", "sandal", now + 2),
        click(4, "u4", "unknown-item", now + 3),
    ]
    assert await store.apply_events(events) == [1, 1, 1, 1]
    assert await popular(catalogue, "shoes") == ["sandal", "boot"]
    assert await popular(catalogue, "sale") == ["boot"]
    # A redelivered event is not counted twice.
    assert await store.apply_events(events[:1]) == [0]
    scores = dict(
        cast(
            list[tuple[bytes, float]],
            await catalogue.redis.zrange(category_popular_key("shoes"), 0, -1, withscores=True),
        )
    )
    assert scores[b"sandal"] == pytest.approx(2 * scores[b"boot"], rel=1e-6)
    keys = {k.decode() async for k in catalogue.redis.scan_iter("sr:c:*:pop")}
    assert keys == {category_popular_key("shoes"), category_popular_key("sale")}


async def test_the_set_is_bounded_and_ranks_as_its_training_twin(
    opened: tuple[StateStore, Catalogue],
) -> None:
    store, catalogue = opened
    rng = random.Random(3)
    items = [f"i{n}" for n in range(12)]
    categories = {item: ("a",) if n % 3 else ("a", "b") for n, item in enumerate(items)}
    await catalogue.apply_records_each(
        [ItemRecord(item, 1, categories=cats) for item, cats in categories.items()]
    )
    twin = CategoryPopularity(categories, store.settings.popularity_half_life_s, keep=5)
    now = 2_000 * HOUR_MS
    events = []
    for n in range(300):
        # Skewed: low ids are popular; time runs over two half-lives.
        item = items[min(int(rng.expovariate(0.4)), len(items) - 1)]
        events.append(click(n, f"u{n % 17}", item, now + n * 144_000))
    for start in range(0, len(events), 50):
        await store.apply_events(events[start : start + 50])
    for event in events:
        twin.observe(event.item_id, event.ts_ms)
    stored = await popular(catalogue, "a")
    assert len(stored) == 5
    assert stored[:3] == twin.of_item("i1", 3)[0]
    mirror = await mirrored(catalogue)
    lists = await mirror.popular(mirror.categories("i0"), 3, 6)
    assert lists == [twin.of_item("i0", 3)[0], twin.of_item("i0", 3)[1]]
    assert mirror.categories("i0") == ("a", "b") and mirror.categories("nope") == ()
    # The lists taken in turn, each item once.
    assert category_candidates([["x", "y", "w"], ["x", "z"]], 3) == ["x", "y", "z"]


async def test_serving_reads_only_available_items_of_the_latest_items_categories(
    opened: tuple[StateStore, Catalogue],
) -> None:
    store, catalogue = opened
    await catalogue.apply_records_each(
        [
            ItemRecord("seen", 1, categories=("shoes",)),
            ItemRecord("hot", 1, categories=("shoes",)),
            ItemRecord("gone", 1, categories=("shoes",)),
        ]
    )
    now = 3_000 * HOUR_MS
    await store.apply_events(
        [click(n, f"u{n}", "gone", now + n) for n in range(3)]
        + [click(10 + n, f"v{n}", "hot", now + 10 + n) for n in range(2)]
        + [click(20, "w", "seen", now + 20)]
    )
    mirror = await mirrored(catalogue)
    assert await mirror.popular(mirror.categories("seen"), 5, 10) == [["gone", "hot", "seen"]]
    await catalogue.apply_records_each(
        [ItemRecord("gone", 2, available=False, categories=("shoes",))]
    )
    await mirror.catch_up()
    assert await mirror.popular(["shoes"], 5, 10) == [["hot", "seen"]]
    assert mirror.categories("hot") == ("shoes",) and not mirror.available("gone")
    assert await mirror.popular(mirror.categories("no-such-item"), 5, 10) == []
