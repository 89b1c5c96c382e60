"""STREAMREC_REDIS_WAIT_REPLICAS: a batch counts as written only once that many
replicas acknowledged it (Redis WAIT on the connection that wrote it); without them
the batch is refused as NOREPLICAS, which the worker waits out and applies again
(its events then duplicates, nothing applied twice). A primary and a replica of
its own, started for the test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.devstack import local_redis
from streamrec.errors import ConfigError
from streamrec.events import Event, EventType
from streamrec.settings import Settings
from streamrec.state import Applied, StateStore, unavailable_reason

pytestmark = pytest.mark.integration


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[int]:
    with local_redis(tmp_path / "primary") as port:
        yield port


def events(prefix: str) -> list[Event]:
    return [
        Event(f"{prefix}-{n}", "ada", f"item-{n}", EventType.CLICK, 1_000 + n) for n in range(5)
    ]


async def test_without_the_replicas_wanted_a_batch_is_refused_and_applied_once_later(
    primary: int, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path,
        redis_url=f"redis://127.0.0.1:{primary}/0",
        redis_wait_replicas=1,
        redis_wait_timeout_ms=1000,
    )
    store = StateStore(settings)
    try:
        batch = events("a")
        refused = await store.apply_events_each(batch)
        assert all(unavailable_reason(r) == "refused" for r in refused if isinstance(r, Exception))
        assert len(refused) == len(batch) and all(isinstance(r, Exception) for r in refused)
        # A replica joins: the batch applied again is acknowledged, each event once.
        replica_of_primary = ("--replicaof", "127.0.0.1", str(primary))
        with local_redis(tmp_path / "replica", *replica_of_primary) as replica_port:
            deadline = time.monotonic() + 20
            with redis.Redis(port=replica_port) as client:
                while client.info("replication").get("master_link_status") != "up":
                    assert time.monotonic() < deadline, "the replica did not sync"
                    time.sleep(0.05)
            assert await store.apply_events_each(batch) == [Applied.DUPLICATE] * len(batch)
            second = await store.apply_events_each(events("b"))
            assert second == [Applied.APPLIED] * 5, second[0]
            (user,) = await store.read_users(["ada"])
            assert len(user.recent_events) == 10
    finally:
        await store.close()


def test_a_cluster_refuses_the_setting_until_it_is_supported(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, redis_url="redis+cluster://127.0.0.1:1/0", redis_wait_replicas=1
    )
    with pytest.raises(ConfigError, match="not supported on a Redis Cluster"):
        StateStore(settings)
