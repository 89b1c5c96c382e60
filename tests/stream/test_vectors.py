"""The worker's user-vector refresh, without Faust: real Redis, a real ONNX bundle, the
ingestor's batch handler, the model holder the server uses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from bench.scenarios.models import corrupt, point_current_at, publish, serving_models
from devtools.devstack import free_port
from stream.ingest import Ingestor, IngestPolicy, RawMessage
from stream.vectors import VectorRefresher
from streamrec.errors import BundleError
from streamrec.events import Event, EventType
from streamrec.loaded import ModelHolder, ServedModel
from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore, StoredUser
from streamrec.user_vectors import cached_user_vector, user_encoder_inputs

pytestmark = pytest.mark.integration


@dataclass
class Worker:
    """What `stream.app` wires together, minus Faust."""

    settings: Settings
    store: StateStore
    holder: ModelHolder
    ingestor: Ingestor
    metrics: IngestMetrics
    refresher: VectorRefresher

    def outcome(self, name: str) -> float:
        return float(self.metrics.vector_refreshes.labels(name)._value.get())

    async def ingest(self, events: list[Event]) -> None:
        messages = [
            RawMessage("clicks", 0, n, e.user_id.encode(), e.to_json(), None)
            for n, e in enumerate(events)
        ]
        await self.ingestor.handle_batch(messages)


@asynccontextmanager
async def worker_for(settings: Settings) -> AsyncIterator[Worker]:
    async def send_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        raise AssertionError(f"unexpected DLQ record {value!r}")

    metrics = IngestMetrics(CollectorRegistry())
    store = StateStore(settings)
    holder = ModelHolder(settings.registry, metrics)
    refresher = VectorRefresher(store, holder, metrics)
    ingestor = Ingestor(
        store, metrics, send_dlq, IngestPolicy(retry_max_s=0.2), state_written=refresher.add
    )
    running = asyncio.create_task(refresher.run())
    try:
        yield Worker(settings, store, holder, ingestor, metrics, refresher)
    finally:
        refresher.stop()
        await running
        await store.redis.flushdb()
        await store.close()


def clicks(user_id: str, items: list[str], start: int = 0) -> list[Event]:
    now_ms = int(time.time() * 1000)
    return [
        Event(f"{user_id}-{start + n}", user_id, item, EventType.CLICK, now_ms + start + n)
        for n, item in enumerate(items)
    ]


async def refreshed(worker: Worker, user_id: str, timeout_s: float = 10.0) -> StoredUser:
    """The user's state once it holds a vector made from this very state."""
    deadline = time.monotonic() + timeout_s
    while True:
        user = await worker.store.read_user(user_id)
        cached = user.cached_vector
        if cached is not None and cached.state_tag == user.state_tag:
            return user
        assert time.monotonic() < deadline, f"{user_id}: no fresh vector within {timeout_s} s"
        await asyncio.sleep(0.02)


def computed_alone(model: ServedModel, user: StoredUser) -> np.ndarray:
    """What the server computes for this user on a cache miss: one user, no padding."""
    inputs = user_encoder_inputs(model, user.recent_events)
    assert inputs is not None
    vector: np.ndarray = model.bundle.user_vectors(*inputs)[0]
    return vector


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def settings(make_settings: Callable[..., Settings], registry_root: Path) -> Settings:
    return make_settings("vectors", registry=registry_root)


async def test_a_batchs_users_get_the_vector_the_server_would_compute(
    settings: Settings, registry_root: Path
) -> None:
    models = serving_models()
    items = list(models.vocab.item_ids)
    version = publish(models, registry_root).version
    async with worker_for(settings) as worker:
        await worker.holder.load()
        model = worker.holder.current
        # Different history lengths: the batch's users are encoded in groups of like
        # length, left-padded within a group (ann and bob), each user's own call is not.
        batch = clicks("ann", items[:7]) + clicks("cat", items[10:12])
        batch += clicks("ned", ["never-seen-1", "never-seen-2"]) + clicks("bob", items[20:25])
        await worker.ingest(batch)
        for user_id in ("ann", "cat", "bob"):
            user = await refreshed(worker, user_id)
            cached = user.cached_vector
            assert cached is not None and cached.model_version == version
            assert cached_user_vector(model, user) is not None  # the server's own check
            stored = np.frombuffer(cached.values, dtype=np.float32)
            assert np.allclose(stored, computed_alone(model, user), atol=1e-5), user_id
        assert (await worker.store.read_user("ned")).cached_vector is None
        ttl_s = await worker.store.redis.ttl("sr:u:{ann}:vec")
        assert 0 < ttl_s <= settings.user_ttl_s
        assert worker.outcome("refreshed") == 3 and worker.outcome("trending") == 1

        # Redelivered: the state did not change, so the cached vectors stand.
        await worker.ingest(batch)
        await asyncio.sleep(0.2)
        assert worker.outcome("cached") == 3 and worker.outcome("refreshed") == 3

        # A new event: a new state tag, a new vector.
        await worker.ingest(clicks("ann", items[20:21], start=100))
        user = await refreshed(worker, "ann")
        assert len(user.recent_events) == 8
        assert worker.outcome("refreshed") == 4
        assert worker.metrics.vector_refresh_seconds._sum.get() > 0


async def test_without_a_model_events_land_and_vectors_wait_for_one(
    settings: Settings, registry_root: Path
) -> None:
    models = serving_models()
    items = list(models.vocab.item_ids)
    async with worker_for(settings) as worker:
        with pytest.raises(BundleError):
            await worker.holder.load()
        await worker.ingest(clicks("ann", items[:3]))
        assert len((await worker.store.read_user("ann")).recent_events) == 3
        await asyncio.sleep(0.1)
        assert (await worker.store.read_user("ann")).cached_vector is None

        version = publish(models, registry_root).version
        watcher = asyncio.create_task(worker.holder.watch(0.05))
        try:
            while worker.holder.held is None:
                await asyncio.sleep(0.02)
            await worker.ingest(clicks("ann", items[3:4], start=10))
            user = await refreshed(worker, "ann")
        finally:
            watcher.cancel()
        assert user.cached_vector is not None and user.cached_vector.model_version == version
        assert worker.metrics.model_info.labels(version)._value.get() == 1


async def test_a_corrupt_bundle_is_refused_and_the_old_one_keeps_refreshing(
    settings: Settings, registry_root: Path
) -> None:
    models = serving_models()
    items = list(models.vocab.item_ids)
    first = publish(models, registry_root).version
    second = publish(models, registry_root, parent=first, make_current=False).version
    corrupt(registry_root, second, "user_encoder.onnx")
    async with worker_for(settings) as worker:
        await worker.holder.load()
        point_current_at(registry_root, second)
        watcher = asyncio.create_task(worker.holder.watch(0.05))
        try:
            while second not in worker.holder.refused:
                await asyncio.sleep(0.02)
        finally:
            watcher.cancel()
        assert worker.metrics.swaps.labels("refused")._value.get() == 1
        assert worker.holder.current.version == first
        await worker.ingest(clicks("ann", items[:3]))
        user = await refreshed(worker, "ann")
        assert user.cached_vector is not None and user.cached_vector.model_version == first


async def test_a_redis_failure_is_counted_and_never_raised(registry_root: Path) -> None:
    models = serving_models()
    publish(models, registry_root)
    dead = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        kafka_bootstrap="unused:1",
        registry=registry_root,
    )
    metrics = IngestMetrics(CollectorRegistry())
    holder = ModelHolder(registry_root, metrics)
    await holder.load()
    store = StateStore(dead)
    try:
        await VectorRefresher(store, holder, metrics).refresh(["ann", "bob"])
    finally:
        await store.close()
    assert metrics.vector_refreshes.labels("failed")._value.get() == 2
