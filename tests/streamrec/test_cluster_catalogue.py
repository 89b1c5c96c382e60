"""The catalogue apply on a Redis Cluster (streamrec/cluster_catalogue.py): the same
catalogue as on a single Redis, and a batch cut short between any two steps, applied
again, is applied once."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from devtools.redis_cluster import LocalRedisCluster
from streamrec import cluster_catalogue as steps
from streamrec.catalogue import Catalogue, ItemApplied
from streamrec.items import ItemChange, ItemDelete, ItemRecord
from streamrec.settings import Settings
from tests.conftest import on_cluster

ITEMS = [f"i{n}" for n in range(30)]
CATEGORIES = ["shoes", "hats", "sale", "boots", "kids"]


def records(seed: int, n: int = 150) -> list[ItemChange]:
    rng = random.Random(seed)
    changes: list[ItemChange] = []
    for _ in range(n):
        item, ts = rng.choice(ITEMS), 1_000 + rng.randrange(100_000)
        if rng.random() < 0.1:
            changes.append(ItemDelete(item, ts))
            continue
        categories = tuple(rng.sample(CATEGORIES, rng.randrange(3)))
        available = rng.random() < 0.8
        changes.append(ItemRecord(item, ts, available=available, categories=categories))
        if rng.random() < 0.05:
            changes.append(changes[-1])  # a redelivery within the batch
    return changes


@pytest.fixture
async def cluster_catalogue(
    redis_cluster: LocalRedisCluster, make_settings: Callable[..., Settings]
) -> AsyncIterator[Catalogue]:
    opened = Catalogue(on_cluster(make_settings("cluster-catalogue"), redis_cluster))
    yield opened
    await opened.redis.flushdb()
    await opened.close()


async def snapshot(catalogue: Catalogue) -> dict[str, Any]:
    """Everything a reader of the catalogue can see: the records, the category sets,
    the counts and the change log (items in change order, and the last change number)."""
    changes = await catalogue.changes_since(0, 10_000)
    return {
        "items": await catalogue.items(ITEMS),
        "categories": {c: await catalogue.items_in_category(c, 100) for c in CATEGORIES},
        "counts": await catalogue.counts(),
        "log": [item for item, _ in changes],
        "seq": max((seq for _, seq in changes), default=0),
        "present": await catalogue.present(),
    }


async def test_a_cluster_holds_the_catalogue_a_single_redis_does(
    cluster_catalogue: Catalogue, make_settings: Callable[..., Settings]
) -> None:
    single = Catalogue(make_settings("cluster-catalogue-single"))
    try:
        for seed in range(3):
            changes = records(seed)
            assert await cluster_catalogue.apply_records_each(
                changes
            ) == await single.apply_records_each(changes)
        assert await snapshot(cluster_catalogue) == await snapshot(single)
        assert await cluster_catalogue.available(ITEMS) == await single.available(ITEMS)
        assert await cluster_catalogue.categories(ITEMS) == await single.categories(ITEMS)
    finally:
        await single.redis.flushdb()
        await single.close()


@pytest.mark.parametrize("ran", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("failing", ["categories", "catalogue", "clear"])
async def test_a_batch_cut_short_at_any_step_is_finished_once_by_applying_it_again(
    cluster_catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch, failing: str, ran: bool
) -> None:
    changes = records(7)
    await cluster_catalogue.apply_records_each(changes)
    expected = await snapshot(cluster_catalogue)
    await cluster_catalogue.redis.flushdb()

    real = steps._raising
    order = iter(["categories", "catalogue", "clear"])
    cut_once = iter([ConnectionError("cut short")])

    async def cut(call: Awaitable[Any]) -> Any:
        failure = next(cut_once, None) if next(order) == failing else None
        if failure is None:
            return await real(call)
        if ran:  # the step went through; the worker died before it heard so
            await real(call)
        else:
            call.close()  # type: ignore[attr-defined]
        raise failure

    monkeypatch.setattr(steps, "_raising", cut)
    with pytest.raises(ConnectionError):
        await cluster_catalogue.apply_records_each(changes)
    monkeypatch.undo()
    # The redelivery: the same records again, finishing what was left.
    again = await cluster_catalogue.apply_records_each(changes)
    if not (failing == "clear" and ran):  # else the batch was whole: all duplicates
        assert ItemApplied.APPLIED in again
    assert await snapshot(cluster_catalogue) == expected
    # And once more: nothing moves.
    assert set(await cluster_catalogue.apply_records_each(changes)) <= {
        ItemApplied.DUPLICATE,
        ItemApplied.STALE,
    }
    assert await snapshot(cluster_catalogue) == expected
