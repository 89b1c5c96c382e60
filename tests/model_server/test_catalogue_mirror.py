"""A server process's copy of the catalogue (model_server/catalogue_mirror.py) against
a real Redis: it follows records, deletes and restocks; it never goes back to an
older record; it says when it is too far behind to check a filter; the change log
it follows stays bounded by the deletion markers' lifetime. On a single Redis and on
a Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from redis.exceptions import RedisError

from model_server.catalogue_mirror import CatalogueBehind, CatalogueMirror
from streamrec.catalogue import Catalogue
from streamrec.events import Event, EventType
from streamrec.items import ItemDelete, ItemRecord
from streamrec.settings import Settings
from streamrec.state import StateStore
from tests.conftest import on_cluster

TTL_S = 600


@pytest.fixture(params=["standalone", "cluster"])
async def catalogue(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> AsyncIterator[Catalogue]:
    settings = make_settings("mirror", item_tombstone_ttl_s=TTL_S)
    if request.param == "cluster":
        settings = on_cluster(settings, request.getfixturevalue("redis_cluster"))
    opened = Catalogue(settings)
    yield opened
    await opened.redis.flushdb()
    await opened.close()


def mirror_of(catalogue: Catalogue, max_lag_s: float = 60.0) -> CatalogueMirror:
    return CatalogueMirror(catalogue, poll_s=0.05, max_lag_s=max_lag_s, popular_refresh_s=60.0)


async def test_the_mirror_follows_records_deletes_and_restocks(catalogue: Catalogue) -> None:
    mirror = mirror_of(catalogue)
    await catalogue.apply_records_each(
        [
            ItemRecord("boot", 1_000, categories=("shoes",), price=59.5),
            ItemRecord("hat", 1_000, categories=("hats",), available=False),
            ItemRecord("scarf", 1_000),
        ]
    )
    assert await mirror.catch_up() == 3
    record = mirror.record("boot")
    assert record is not None and record.price == 59.5 and mirror.categories("boot") == ("shoes",)
    assert [mirror.available(i) for i in ("boot", "hat", "scarf", "never-heard-of")] == [
        True,
        False,
        True,
        True,  # the catalogue is optional: an item it lacks is offered
    ]
    await catalogue.apply_records_each(
        [
            ItemDelete("scarf", 2_000),
            ItemRecord("hat", 2_000, categories=("hats",)),
            ItemRecord("boot", 500, categories=("sale",)),  # late: changes nothing
        ]
    )
    assert await mirror.catch_up() == 2
    assert mirror.record("scarf") is None and mirror.available("hat")
    assert mirror.categories("boot") == ("shoes",)
    assert await mirror.catch_up() == 0  # nothing new
    # A fresh process reads the same catalogue from the start of the log.
    fresh = mirror_of(catalogue)
    await fresh.catch_up()
    assert fresh.records == mirror.records


async def test_a_filter_is_refused_while_the_mirror_is_behind(catalogue: Catalogue) -> None:
    mirror = mirror_of(catalogue, max_lag_s=0.2)
    with pytest.raises(CatalogueBehind, match="never read"):
        mirror.check_current()
    await mirror.catch_up()
    mirror.check_current()
    # Redis stops answering: the copy ages until a filter cannot be checked against it.
    unreachable = catalogue.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    broken = Catalogue(unreachable)
    mirror.catalogue = broken
    with pytest.raises(RedisError):
        await mirror.catch_up()
    mirror._synced_at -= 1.0  # as if a second had passed without reaching Redis
    with pytest.raises(CatalogueBehind, match="last read"):
        mirror.check_current()
    await broken.close()


async def test_popular_lists_are_held_and_availability_is_applied_at_each_call(
    catalogue: Catalogue,
) -> None:
    store = StateStore(catalogue.settings, client=catalogue.redis)
    await catalogue.apply_records_each(
        [ItemRecord(i, 1, categories=("shoes",)) for i in ("a", "b", "c")]
    )
    clicks = [("a", 3), ("b", 2), ("c", 1)]
    await store.apply_events(
        [
            Event(f"e{item}{n}", f"u{n}", item, EventType.CLICK, 1_000_000 + n)
            for item, times in clicks
            for n in range(times)
        ]
    )
    mirror = mirror_of(catalogue)
    await mirror.catch_up()
    assert await mirror.popular(["shoes", "none"], 2, 4) == [["a", "b"], []]
    await catalogue.apply_records_each([ItemRecord("a", 2, categories=("shoes",), available=False)])
    await mirror.catch_up()
    # The list is as read a moment ago; the stock-out is applied from the mirror.
    assert await mirror.popular(["shoes"], 2, 4) == [["b", "c"]]


async def test_the_lists_requests_ask_about_are_renewed_in_the_background(
    catalogue: Catalogue,
) -> None:
    """A request never waits for a read of a list requests keep asking for: the
    follow loop renews them (one call per refresh); a list no request asked for
    since is not read again until one does."""
    store = StateStore(catalogue.settings, client=catalogue.redis)
    await catalogue.apply_records_each(
        [
            ItemRecord(i, 1, categories=(c,))
            for i, c in (("a", "shoes"), ("b", "shoes"), ("h", "hats"))
        ]
    )

    async def clicks(item: str, times: int) -> None:
        await store.apply_events(
            [Event(f"{item}-{uuid.uuid4()}", f"u{n}", item, EventType.CLICK, 1_000_000 + n)
             for n in range(times)]
        )  # fmt: skip

    await clicks("a", 2)
    await clicks("h", 1)
    mirror = CatalogueMirror(catalogue, poll_s=0.05, max_lag_s=60.0, popular_refresh_s=0.3)
    await mirror.catch_up()
    assert await mirror.popular(["shoes", "hats"], 2, 4) == [["a"], ["h"]]  # read now
    await clicks("b", 5)
    assert mirror.held_popular(["shoes"], 2, 4) == [["a"]]  # held: asked about
    await asyncio.sleep(0.35)  # past one refresh: still served as held, never read
    assert mirror.held_popular(["shoes"], 2, 4) == [["a"]]
    hats_read_at = mirror._popular["hats"][0]
    await mirror.poll()  # the follow loop's step renews what was asked
    assert mirror.held_popular(["shoes"], 2, 4) == [["b", "a"]]
    assert mirror._popular["hats"][0] == hats_read_at  # not asked since: not read
    await asyncio.sleep(0.65)  # two refreshes without a renewal: the request reads
    assert mirror.held_popular(["hats"], 2, 4) is None


async def test_the_change_log_forgets_deletes_once_their_markers_expire(
    catalogue: Catalogue,
) -> None:
    day_ms = 24 * 3600 * 1000
    await catalogue.apply_records_each(
        [ItemRecord("old", 1), ItemDelete("old", 2), ItemRecord("kept", 1)]
    )
    changes = await catalogue.redis.zrange(catalogue.keys.changes, 0, -1)
    assert set(changes) == {b"old", b"kept"}
    # A delete one marker lifetime later trims the earlier delete's entries.
    await catalogue.apply_records_each([ItemDelete("gone", 3 + TTL_S * 1000 + day_ms)])
    assert set(await catalogue.redis.zrange(catalogue.keys.changes, 0, -1)) == {b"kept", b"gone"}
    assert await catalogue.redis.zrange(catalogue.keys.deletions, 0, -1) == [b"gone"]
    # Back in the catalogue: no longer a deletion to trim.
    await catalogue.apply_records_each([ItemRecord("gone", 4 + TTL_S * 1000 + day_ms)])
    assert await catalogue.redis.zrange(catalogue.keys.deletions, 0, -1) == []


async def test_changed_since_reads_on_or_says_it_cannot(
    catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the live items read on from: the changes held, or None once they no
    longer reach back (the live items then look at every record)."""
    import model_server.catalogue_mirror as mirror_module

    monkeypatch.setattr(mirror_module, "CHANGES_HELD", 3)
    mirror = mirror_of(catalogue)
    await catalogue.apply_records_each([ItemRecord("a", 1), ItemRecord("b", 1)])
    await mirror.catch_up()
    assert mirror.changed_since(0) == ["a", "b"]
    at = mirror.seq
    assert mirror.changed_since(at) == []
    await catalogue.apply_records_each([ItemRecord(i, 1) for i in ("c", "d", "e")])
    await mirror.catch_up()
    assert mirror.changed_since(at) == ["c", "d", "e"]
    assert mirror.changed_since(0) is None
