"""The pipelined connection the model server reads user state through: the same
answers as redis-py, each caller its own reply, and it survives what Redis does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from streamrec.events import Event, EventType
from streamrec.pipelined import PipelinedConnection
from streamrec.settings import Settings
from streamrec.state import StateStore


def events_for(user_id: str, count: int) -> list[Event]:
    return [
        Event(f"{user_id}-{n}", user_id, f"item-{n % 7}", EventType.CLICK, 1_000 + n)
        for n in range(count)
    ]


async def test_users_read_through_it_equal_the_pools_reads(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings("pipelined")
    pooled = StateStore(settings)
    piped = StateStore(settings, reads=PipelinedConnection(settings.redis_url))
    try:
        users = [f"u{n}" for n in range(30)]
        for n, user_id in enumerate(users):
            await pooled.apply_events(events_for(user_id, n))
        expected = await pooled.read_users([*users, "nobody"])
        # Many callers at once on the one connection: each gets its own user back.
        one_by_one = await asyncio.gather(*(piped.read_user(u) for u in [*users, "nobody"]))
        assert one_by_one == expected
        assert await piped.read_users([*users, "nobody"]) == expected
    finally:
        await pooled.close()
        await piped.close()


async def test_a_flushed_script_cache_is_reloaded(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("pipelined")
    store = StateStore(settings, reads=PipelinedConnection(settings.redis_url))
    try:
        await store.apply_events(events_for("ann", 3))
        before = await store.read_user("ann")
        await store.redis.script_flush()
        assert await store.read_user("ann") == before
    finally:
        await store.close()


async def test_a_lost_connection_is_opened_again(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("pipelined")
    reads = PipelinedConnection(settings.redis_url)
    store = StateStore(settings, reads=reads)
    try:
        await store.apply_events(events_for("bob", 2))
        before = await store.read_user("bob")
        # Redis drops the connection (a restart, a failover, an idle timeout).
        await store.redis.client_kill_filter(_type="normal", skipme=True)
        assert await store.read_user("bob") == before
    finally:
        await store.close()


async def test_a_caller_that_gives_up_leaves_the_others_replies_in_step(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings("pipelined")
    reads = PipelinedConnection(settings.redis_url)
    try:
        slow = asyncio.create_task(reads.call("DEBUG", "SLEEP", "0.2"))
        await asyncio.sleep(0.05)
        slow.cancel()
        assert await reads.call("ECHO", "mine") == b"mine"
    finally:
        await reads.close()


async def test_error_replies_and_no_redis_raise_redis_errors(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings("pipelined")
    reads = PipelinedConnection(settings.redis_url)
    try:
        with pytest.raises(ResponseError):
            await reads.call("NO-SUCH-COMMAND")
        assert await reads.call("PING") == b"PONG"  # the connection is still usable
    finally:
        await reads.close()
    nowhere = PipelinedConnection("redis://127.0.0.1:1/0")
    with pytest.raises(RedisConnectionError):
        await nowhere.call("PING")


def test_only_plain_and_unix_urls_are_pipelined() -> None:
    assert PipelinedConnection.supports("redis://h:6379/2")
    assert PipelinedConnection.supports("unix:///run/redis.sock?db=1")
    assert not PipelinedConnection.supports("rediss://h:6380/0")
