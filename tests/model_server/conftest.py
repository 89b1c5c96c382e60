"""Model-server fixtures: one tiny real bundle trained per session, published into
a fresh registry per test; the app run in-process (lifespan included) or as
`streamrec serve` in a child process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from devtools.devstack import DevStack, free_port
from devtools.processes import ServiceProcess
from model_server.app import create_app
from retrain.pipeline import TrainedModels
from retrain.publish import publish_models
from streamrec import registry
from streamrec.events import Event, EventType
from streamrec.settings import Settings
from streamrec.state import StateStore
from tests.conftest import pipeline_names
from tests.retrain.fixtures import TINY_PLAN, serving_models

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def trained() -> TrainedModels:
    return serving_models()


def publish(
    models: TrainedModels, root: Path, parent: str | None = None, make_current: bool = True
) -> registry.Manifest:
    return publish_models(
        models, root, TINY_PLAN, {"source": "test"}, parent, 100_000, make_current=make_current
    )


def point_current_at(root: Path, version: str) -> None:
    """Move CURRENT without the registry's own verification: what a bad actor or a
    half-copied volume could do, and what the server must survive."""
    temp = root / ".CURRENT.tmp"
    temp.write_text(json.dumps({"version": version}))
    temp.replace(root / registry.CURRENT)


def corrupt(root: Path, version: str, name: str = "ranker.onnx") -> None:
    path = root / version / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@dataclass
class Served:
    settings: Settings
    root: Path
    first: registry.Manifest
    models: TrainedModels

    @property
    def items(self) -> list[str]:
        return list(self.models.vocab.item_ids)


@pytest.fixture(scope="session")
def serve_settings(make_settings: Callable[..., Settings]) -> Settings:
    """One Redis database for every model-server test (there are only 16); each test
    flushes it and gets its own registry, port and topics."""
    # A Redis timeout the shared cores cannot trip (a starved Redis took over the
    # default 30 ms): tests of the timeouts set their own, drill 8 runs the default.
    return make_settings(
        "serve", admin_token=ADMIN_TOKEN, registry_poll_s=0.1, serve_redis_timeout_ms=2000
    )


@pytest.fixture
def served(trained: TrainedModels, serve_settings: Settings, tmp_path: Path) -> Served:
    redis.Redis.from_url(serve_settings.redis_url).flushdb()
    root = tmp_path / "registry"
    first = publish(trained, root)
    name = f"serve-{tmp_path.name}"
    settings = serve_settings.model_copy(
        update={
            "registry": root,
            "serve_port": free_port(),
            "worker_web_port": free_port(),
            **pipeline_names(name),
        }
    )
    return Served(settings, root, first, trained)


@asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Starlette]]:
    """The app with its lifespan, called through httpx without a socket."""
    app = create_app(settings, CollectorRegistry())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://model-server") as client,
    ):
        yield client, app


def events_for(
    user_id: str, items: Iterable[str], event_type: EventType = EventType.CLICK, start: int = 0
) -> list[Event]:
    now_ms = int(time.time() * 1000)
    return [
        Event(f"{user_id}-{event_type.value}-{start + n}", user_id, item, event_type, now_ms + n)
        for n, item in enumerate(items)
    ]


async def apply(settings: Settings, events: list[Event]) -> None:
    store = StateStore(settings)
    try:
        await store.apply_events(events)
    finally:
        await store.close()


async def wait_until(check: Callable[[], object], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {timeout_s} s: {check}")


@pytest.fixture
def server_process(served: Served, tmp_path: Path) -> Iterator[ServiceProcess]:
    """`streamrec serve` in a child process, ready."""
    settings = served.settings
    with ServiceProcess(
        settings, ["serve"], tmp_path / "serve.log", settings.serve_port
    ) as process:
        yield process


@contextmanager
def frozen_redis(settings: Settings, at_most_s: float = 5.0) -> Iterator[None]:
    """The tests' own redis-server stopped (SIGSTOP) and continued after, or after
    `at_most_s` whatever happens: connections stay open and every command waits, as
    with a host that hangs."""
    pid = DevStack(settings.home).status().redis_pid
    if pid is None:
        pytest.skip("needs the tests' own redis-server (STREAMREC_REDIS_URL is set)")
    thaw = threading.Timer(at_most_s, os.kill, (pid, signal.SIGCONT))
    os.kill(pid, signal.SIGSTOP)
    thaw.start()
    try:
        yield
    finally:
        thaw.cancel()
        os.kill(pid, signal.SIGCONT)
