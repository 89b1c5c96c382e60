"""Model-server fixtures: one tiny real bundle trained per session, published into
a fresh registry per test; the app run in-process (lifespan included) or as
`streamrec serve` in a child process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from bench.scenarios.models import publish, serving_models
from bench.scenarios.workers import pipeline_names
from devtools.devstack import free_port
from devtools.processes import ServiceProcess
from model_server.app import create_app
from retrain.training import TrainedModels
from streamrec import registry
from streamrec.settings import Settings

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def trained() -> TrainedModels:
    return serving_models()


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
    # A Redis timeout and a request budget the shared cores cannot trip (a starved
    # Redis took over the default 30 ms; a loaded run ranked past the default 50 ms
    # and answered in retrieval order): tests of the timeouts and of the budget set
    # their own, drill 8 runs the defaults.
    return make_settings(
        "serve",
        admin_token=ADMIN_TOKEN,
        registry_poll_s=0.1,
        serve_redis_timeout_ms=2000,
        serve_budget_ms=60_000,
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


async def wait_until(check: Callable[[], object], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {timeout_s} s: {check}")


async def wait_until_async(check: Callable[[], Awaitable[object]], timeout_s: float = 10) -> None:
    """For what the server does a moment after it answers, or after Redis changes."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not true within {timeout_s} s: {check}"
        await asyncio.sleep(0.01)


@pytest.fixture
def server_process(served: Served, tmp_path: Path) -> Iterator[ServiceProcess]:
    """`streamrec serve` in a child process, ready."""
    settings = served.settings
    with ServiceProcess(
        settings, ["serve"], tmp_path / "serve.log", settings.serve_port
    ) as process:
        yield process
