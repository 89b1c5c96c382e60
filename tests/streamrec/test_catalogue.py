"""The catalogue script and reads against a real Redis: event-time order, deletes, the
category index, and the read API serving will use; each test on a single Redis and
on a Redis Cluster (its apply in steps by slot, streamrec/cluster_catalogue.py)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.catalogue import (
    Catalogue,
    CatalogueItem,
    ItemApplied,
)
from streamrec.items import ItemChange, ItemDelete, ItemRecord
from streamrec.keys import category_available_key, item_info_key
from streamrec.settings import Settings
from tests.conftest import on_cluster


def catalogue_settings(request: pytest.FixtureRequest, settings: Settings, kind: str) -> Settings:
    if kind == "cluster":
        return on_cluster(settings, request.getfixturevalue("redis_cluster"))
    return settings


@pytest.fixture(params=["standalone", "cluster"])
async def catalogue(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> AsyncIterator[Catalogue]:
    settings = make_settings("catalogue", item_tombstone_ttl_s=600)
    opened = Catalogue(catalogue_settings(request, settings, request.param))
    yield opened
    await opened.redis.flushdb()
    await opened.close()


SHOE = ItemRecord(
    "i1", 1_000, categories=("shoes", "sale"), title="Trail runner", price=59.5,
    tags=("red",), attributes={"brand": "acme", "size": 42, "waterproof": True},
)  # fmt: skip


async def apply(catalogue: Catalogue, *changes: ItemChange) -> list[ItemApplied]:
    outcomes = await catalogue.apply_records_each(changes)
    applied = [o for o in outcomes if isinstance(o, ItemApplied)]
    assert applied == outcomes, outcomes
    return applied


async def members(catalogue: Catalogue, category: str) -> dict[str, float]:
    # The stubs type every reply as bytes or str; this client does not decode.
    rows = cast(
        list[tuple[bytes, float]],
        await catalogue.redis.zrange(category_available_key(category), 0, -1, withscores=True),
    )
    return {member.decode(): score for member, score in rows}


async def test_a_record_is_one_hash_and_a_member_of_each_of_its_categories(
    catalogue: Catalogue,
) -> None:
    assert await apply(catalogue, SHOE) == [ItemApplied.APPLIED]
    stored = cast(dict[bytes, bytes], await catalogue.redis.hgetall(item_info_key("i1")))
    assert {k.decode(): v.decode() for k, v in stored.items()} == {
        "ts": "1000",
        "fp": stored[b"fp"].decode(),
        "available": "1",
        "category": '["shoes","sale"]',
        "title": "Trail runner",
        "price": "59.5",
        "tags": '["red"]',
        "attributes": '{"brand":"acme","size":42,"waterproof":true}',
    }
    assert await catalogue.redis.ttl(item_info_key("i1")) == -1  # lives until deleted
    assert await members(catalogue, "shoes") == {"i1": 1000.0}
    assert await members(catalogue, "sale") == {"i1": 1000.0}
    assert await catalogue.items(["i1", "nope"]) == [
        CatalogueItem(
            "i1", 1000, True, ("shoes", "sale"), "Trail runner", 59.5, ("red",),
            {"brand": "acme", "size": 42, "waterproof": True},
        ),
        None,
    ]  # fmt: skip


async def test_the_read_api(catalogue: Catalogue) -> None:
    await apply(
        catalogue,
        SHOE,
        ItemRecord("i2", 2_000, categories=("shoes",)),
        ItemRecord("i3", 3_000, categories=("shoes",)),
        ItemRecord("i4", 4_000, available=False, categories=("shoes",)),
        ItemRecord("i5", 5_000),
        ItemDelete("i6", 6_000),
    )
    ids = ["i1", "i4", "i5", "i6", "unknown"]
    assert await catalogue.available(ids) == [True, False, True, False, True]
    assert await catalogue.categories(ids) == [("shoes", "sale"), ("shoes",), (), (), ()]
    assert await catalogue.items_in_category("shoes", 10) == ["i3", "i2", "i1"]
    assert await catalogue.items_in_category("shoes", 2) == ["i3", "i2"]
    assert await catalogue.items_in_category("shoes", 0) == []
    assert await catalogue.items_in_category("hats", 10) == []
    assert await catalogue.available([]) == [] and await catalogue.categories([]) == []


async def test_an_older_record_never_overwrites_a_newer_one(catalogue: Catalogue) -> None:
    newer = ItemRecord("i1", 2_000, available=False, categories=("boots",), price=70.0)
    assert await apply(catalogue, newer, SHOE) == [ItemApplied.APPLIED, ItemApplied.STALE]
    assert await catalogue.items(["i1"]) == [
        CatalogueItem("i1", 2000, False, ("boots",), price=70.0)
    ]
    assert await members(catalogue, "shoes") == {} and await members(catalogue, "boots") == {}


async def test_a_redelivery_is_a_duplicate_and_a_same_time_change_is_applied(
    catalogue: Catalogue,
) -> None:
    changed = ItemRecord("i1", 1_000, categories=("hats",))
    assert await apply(catalogue, SHOE, SHOE, changed) == [
        ItemApplied.APPLIED,
        ItemApplied.DUPLICATE,
        ItemApplied.APPLIED,  # same ts, other content: the later one in the partition wins
    ]
    assert await catalogue.categories(["i1"]) == [("hats",)]
    assert await members(catalogue, "shoes") == {} and await members(catalogue, "hats") == {
        "i1": 1000.0
    }


async def test_a_newer_record_moves_the_item_between_categories_and_out_of_stock(
    catalogue: Catalogue,
) -> None:
    await apply(catalogue, SHOE, ItemRecord("i1", 2_000, categories=("sale", "boots")))
    assert await members(catalogue, "shoes") == {}
    assert await members(catalogue, "sale") == {"i1": 2000.0}
    assert await members(catalogue, "boots") == {"i1": 2000.0}
    await apply(catalogue, ItemRecord("i1", 3_000, available=False, categories=("boots",)))
    assert await members(catalogue, "sale") == {} and await members(catalogue, "boots") == {}
    assert await catalogue.available(["i1"]) == [False]
    assert await catalogue.categories(["i1"]) == [("boots",)]  # still known while out of stock
    await apply(catalogue, ItemRecord("i1", 4_000, categories=("boots",)))
    assert await members(catalogue, "boots") == {"i1": 4000.0}


async def test_a_delete_removes_the_item_everywhere_and_keeps_a_marker(
    catalogue: Catalogue,
) -> None:
    await apply(catalogue, SHOE)
    assert await apply(catalogue, ItemDelete("i1", 1_500)) == [ItemApplied.DELETED]
    stored = await catalogue.redis.hgetall(item_info_key("i1"))
    assert stored == {b"ts": b"1500", b"fp": b"-", b"available": b"0", b"deleted": b"1"}
    assert 0 < await catalogue.redis.ttl(item_info_key("i1")) <= 600
    stored_keys = cast(list[bytes], await catalogue.redis.keys("sr:*"))  # every primary's
    assert [k for k in stored_keys if k.startswith(b"sr:c:")] == []
    # An older record arriving late does not bring it back; a redelivered delete is a
    # duplicate; a newer record does.
    assert await apply(catalogue, SHOE, ItemDelete("i1", 1_500)) == [
        ItemApplied.STALE,
        ItemApplied.DUPLICATE,
    ]
    assert await catalogue.available(["i1"]) == [False]
    assert await apply(catalogue, ItemRecord("i1", 2_000, categories=("shoes",))) == [
        ItemApplied.APPLIED
    ]
    assert await catalogue.redis.ttl(item_info_key("i1")) == -1
    assert await catalogue.items_in_category("shoes", 5) == ["i1"]


async def test_a_batch_of_many_script_calls_keeps_each_items_order(
    catalogue: Catalogue,
) -> None:
    changes: list[ItemChange] = []
    for n in range(250):  # three script calls
        changes.append(ItemRecord(f"i{n % 7}", 1_000 + n, categories=(f"c{n % 3}",)))
    outcomes = await apply(catalogue, *changes)
    assert outcomes == [ItemApplied.APPLIED] * 250
    for item in range(7):
        last = max(n for n in range(250) if n % 7 == item)
        assert await catalogue.categories([f"i{item}"]) == [(f"c{last % 3}",)]
    index = {c: await members(catalogue, c) for c in ("c0", "c1", "c2")}
    assert sum(len(m) for m in index.values()) == 7


changes_of_three_items = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(1, 10**6),
        st.sampled_from(["record", "unavailable", "delete"]),
        st.lists(st.sampled_from(["x", "y", "z"]), max_size=2, unique=True),
    ),
    min_size=1,
    max_size=30,
    unique_by=lambda change: (change[0], change[1]),  # distinct times per item
)


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
@given(changes_of_three_items, st.randoms())
@settings(max_examples=40)
async def test_any_arrival_order_gives_the_newest_record_per_item(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    kind: str,
    drawn: list[tuple[str, int, str, list[str]]],
    rng: random.Random,
) -> None:
    changes: list[ItemChange] = [
        ItemDelete(item, ts)
        if kind == "delete"
        else ItemRecord(item, ts, available=kind == "record", categories=tuple(categories))
        for item, ts, kind, categories in drawn
    ]
    arrived = list(changes)
    rng.shuffle(arrived)
    catalogue = Catalogue(catalogue_settings(request, make_settings("catalogue-order"), kind))
    try:
        await apply(catalogue, *arrived)
        newest: dict[str, ItemChange] = {}
        for change in changes:
            if change.item_id not in newest or change.ts_ms > newest[change.item_id].ts_ms:
                newest[change.item_id] = change
        index: dict[str, set[str]] = {"x": set(), "y": set(), "z": set()}
        for item, change in newest.items():
            (stored,) = await catalogue.items([item])
            assert stored is not None and stored.ts_ms == change.ts_ms
            if isinstance(change, ItemDelete):
                assert stored.deleted and not stored.available
                continue
            assert (stored.available, stored.categories) == (change.available, change.categories)
            if change.available:
                for category in change.categories:
                    index[category].add(item)
        for category, items in index.items():
            assert set(await members(catalogue, category)) == items
        live = [c for c in newest.values() if isinstance(c, ItemRecord)]
        assert await catalogue.counts() == (len(live), sum(not c.available for c in live))
    finally:
        await catalogue.redis.flushdb()
        await catalogue.close()


async def test_the_catalogue_counts_follow_every_record(catalogue: Catalogue) -> None:
    """The gauges' counts: live items and, of them, unavailable ones; a redelivery, a
    stale record and a second delete change nothing."""
    assert await catalogue.counts() == (0, 0)
    await apply(catalogue, SHOE, ItemRecord("i2", 1_000))
    assert await catalogue.counts() == (2, 0)
    await apply(catalogue, ItemRecord("i2", 2_000, available=False))
    assert await catalogue.counts() == (2, 1)
    await apply(catalogue, ItemRecord("i2", 2_000, available=False), ItemRecord("i2", 1_500))
    assert await catalogue.counts() == (2, 1)  # a duplicate, then a stale record
    await apply(catalogue, ItemDelete("i2", 3_000), ItemDelete("i2", 3_000))
    assert await catalogue.counts() == (1, 0)
    await apply(catalogue, ItemRecord("i2", 4_000, available=False))
    assert await catalogue.counts() == (2, 1)  # back after its delete
