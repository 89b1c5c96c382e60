"""The event apply on a Redis Cluster (streamrec/cluster_apply.py): the same state as
on a single Redis, and a batch cut short between any two steps, applied again, is
applied once."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from devtools.devstack import free_port
from devtools.redis_cluster import LocalRedisCluster
from streamrec.cluster_apply import ClusterApply
from streamrec.events import Event, EventType
from streamrec.settings import Settings
from streamrec.state import Applied, StateStore

USERS = [f"u{n}" for n in range(12)]
ITEMS = [f"i{n}" for n in range(20)]


def batch(seed: int, n: int = 120) -> list[Event]:
    rng = random.Random(seed)
    kinds = [EventType.CLICK, EventType.CLICK, EventType.CLICK, EventType.PURCHASE]
    return [
        Event(
            f"e{seed}-{k}",
            rng.choice(USERS),
            rng.choice(ITEMS),
            rng.choice(kinds),
            1_700_000_000_000 + rng.randrange(3_600_000),
        )
        for k in range(n)
    ]


@pytest.fixture
async def cluster_store(
    redis_cluster: LocalRedisCluster, make_settings: Callable[..., Settings]
) -> AsyncIterator[StateStore]:
    redis_cluster.flush()
    settings = make_settings("cluster-apply").model_copy(update={"redis_url": redis_cluster.url})
    state = StateStore(settings)
    yield state
    await state.redis.flushdb()
    await state.close()


async def snapshot(store: StateStore) -> dict[str, Any]:
    users = await store.read_users(USERS)
    return {
        "users": [u.to_json_dict() for u in users],
        "covis": [u.covis for u in users],
        "popularity": await store.read_stored_popularity(ITEMS),
        "trending": {t: await store.trending(t, 50) for t in (EventType.CLICK, EventType.PURCHASE)},
    }


def assert_same(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert left["users"] == right["users"]
    for mine, theirs in zip(left["covis"], right["covis"], strict=True):
        assert [(i, e) for i, _, e in mine] == [(i, e) for i, _, e in theirs]
        for (_, links, _), (_, other, _) in zip(mine, theirs, strict=True):
            assert links.keys() == other.keys()
            assert np.allclose([links[k] for k in links], [other[k] for k in links])
    assert np.allclose(left["popularity"], right["popularity"])
    # Trending scores are relative (to an epoch each store chose): compared as ratios.
    for kind, rows in left["trending"].items():
        theirs = dict(right["trending"][kind])
        assert {item for item, _ in rows} == set(theirs)
        mine = np.array([score for _, score in rows])
        other = np.array([theirs[item] for item, _ in rows])
        assert np.allclose(mine / mine.max(), other / other.max())


async def test_a_cluster_holds_the_state_a_single_redis_does(
    cluster_store: StateStore, make_settings: Callable[..., Settings]
) -> None:
    single = StateStore(make_settings("cluster-apply-single"))
    try:
        for seed in range(3):
            events = batch(seed)
            assert await cluster_store.apply_events(events) == await single.apply_events(events)
        assert_same(await snapshot(cluster_store), await snapshot(single))
        assert await cluster_store.new_event_count() == await single.new_event_count()
    finally:
        await single.redis.flushdb()
        await single.close()


@pytest.mark.parametrize("ran", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("failing", ["item", "global", "clear"])
async def test_a_batch_cut_short_at_any_step_is_finished_once_by_applying_it_again(
    cluster_store: StateStore, monkeypatch: pytest.MonkeyPatch, failing: str, ran: bool
) -> None:
    events = batch(1)
    await cluster_store.apply_events(events)
    expected = await snapshot(cluster_store)
    await cluster_store.redis.flushdb()

    real = ClusterApply._raise_any
    failures = iter([ConnectionError("cut short")])

    async def cut(self: ClusterApply, step: str, calls: list[Awaitable[Any]]) -> list[Any]:
        failure = next(failures, None) if step == failing else None
        if failure is None:
            return await real(self, step, calls)
        if ran:  # the step went through; the worker died before it heard so
            await real(self, step, calls)
        else:
            for call in calls:
                call.close()  # type: ignore[attr-defined]
        raise failure

    monkeypatch.setattr(ClusterApply, "_raise_any", cut)
    with pytest.raises(ConnectionError):
        await cluster_store.apply_events(events)
    # The redelivery: the same events again, each applied (not taken for a duplicate).
    again = await cluster_store.apply_events(events)
    if not (failing == "clear" and ran):  # else the batch was whole: all duplicates
        assert again.count(Applied.DUPLICATE) < len(events)
    assert_same(await snapshot(cluster_store), expected)
    # And once more: everything is a duplicate now, nothing moves.
    assert set(await cluster_store.apply_events(events)) <= {Applied.DUPLICATE}
    assert_same(await snapshot(cluster_store), expected)


async def test_a_cluster_url_naming_several_nodes_works_while_its_first_is_down(
    redis_cluster: LocalRedisCluster, make_settings: Callable[..., Settings]
) -> None:
    """`redis+cluster://h1:p1,h2:p2/0`: the client learns the cluster from whichever
    named node answers, so a worker starts while the first one is down."""
    redis_cluster.flush()
    live = redis_cluster.live_ports()[0]
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{live}/0"
    store = StateStore(make_settings("cluster-seeds").model_copy(update={"redis_url": url}))
    try:
        events = batch(7, 10)
        assert Applied.APPLIED in await store.apply_events(events)
        (user,) = await store.read_users([events[0].user_id])
        assert user.recent_events
    finally:
        await store.close()
