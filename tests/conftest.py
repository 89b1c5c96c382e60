"""Real parts for the tests: one embedded broker and one Redis server per session.

Both are started in a temporary home, on free ports, so a test run never
touches a developer's stack or the machine's Redis. Each pipeline under test
gets its own topics, consumer group and Redis database.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from bench.scenarios.workers import pipeline_names
from devtools.devstack import DevStack, free_port
from devtools.redis_cluster import LocalRedisCluster
from streamrec.settings import Settings
from streamrec.state import StateStore

_redis_dbs = itertools.count(1)

# The tests share two cores with a broker and Redis: time limits would only flake.
hypothesis_settings.register_profile(
    "streamrec", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("streamrec")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a test marked slow first, each module kept whole and in order:
    `make test` hands its workers a module at a time in this order, and a long
    module handed out last would run on alone while the other workers idle."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("streamrec-home")
    stack = DevStack(home)
    # With STREAMREC_REDIS_URL set the tests use that server instead of their own,
    # and flush databases 1-15 of it as they go.
    outside = Settings()
    status = stack.up(external_redis_url=outside.redis_url if outside.redis_url_explicit else "")
    try:
        yield Settings(
            home=home,
            kafka_bootstrap=status.kafka_bootstrap or "",
            redis_url=status.redis_url or "",
        )
    finally:
        stack.down()


@pytest.fixture(scope="session")
def make_settings(dev_stack: Settings) -> Callable[..., Settings]:
    """Settings for one isolated pipeline: its own topics, group and Redis db."""

    base = dev_stack.redis_url.rsplit("/", 1)[0]
    configured = redis.Redis.from_url(f"{base}/0").config_get("databases")["databases"]
    assert configured is not None
    databases = int(configured)

    def build(name: str, **overrides: object) -> Settings:
        # Database 0 is the demo's; wrap around on a server with few databases.
        db = 1 + (next(_redis_dbs) - 1) % (databases - 1)
        fields: dict[str, object] = {
            "home": dev_stack.home,
            "kafka_bootstrap": dev_stack.kafka_bootstrap,
            "redis_url": f"{base}/{db}",
            **pipeline_names(name),
            "input_partitions": 2,
            "archive_dir": dev_stack.home / "archive" / name,
            "worker_web_port": free_port(),
            "lag_poll_s": 0.5,
            "redis_retry_max_s": 0.5,
            # The embedded broker holds a group join for about half the session
            # timeout: 2 s per worker start, stop and rebalance instead of 5.
            "consumer_session_timeout_s": 4.0,
            "consumer_heartbeat_s": 0.5,
            **overrides,
        }
        settings = Settings(**fields)  # type: ignore[arg-type]
        redis.Redis.from_url(settings.redis_url).flushdb()
        return settings

    return build


@pytest.fixture
async def store(make_settings: Callable[..., Settings]) -> AsyncIterator[StateStore]:
    state = StateStore(make_settings("state"))
    yield state
    await state.redis.flushdb()
    await state.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A Redis Cluster of three primaries (no replicas) on free local ports."""
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def on_cluster(settings: Settings, cluster: LocalRedisCluster) -> Settings:
    """These settings with their state on the (flushed) session cluster: how a test
    of a single Redis runs again on a cluster."""
    cluster.flush()
    return settings.model_copy(update={"redis_url": cluster.url})


@pytest.fixture(params=["standalone", "cluster"])
async def any_store(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> AsyncIterator[StateStore]:
    """`store` on a single Redis, then on a Redis Cluster (its state path). A module
    runs its tests against both by naming this its `store`."""
    if request.param == "standalone":
        settings = make_settings("state")
    else:
        settings = on_cluster(make_settings("state"), request.getfixturevalue("redis_cluster"))
    state = StateStore(settings)
    yield state
    await state.redis.flushdb()
    await state.close()
