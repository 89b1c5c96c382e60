"""Fault drills on serving (drills 4 and 5) as plain functions that return their figures:
the tests assert on them, `streamrec bench drills` writes them to bench/reports/.

4. Bad bundles published under load: a corrupt one, one from another feature schema,
   one whose index does not fit its encoder. All refused; the old version serves.
5. Two servers under load through the retrying client; one is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import republish
from bench.scenarios.models import corrupt, point_current_at, publish
from bench.scenarios.users import apply, events_for
from devtools.devstack import free_port
from devtools.processes import ServiceProcess
from devtools.scrape import counter_total
from retrain.training import TrainedModels
from streamrec import registry
from streamrec.client import AsyncRecommenderClient, RetryPolicy
from streamrec.errors import ServingError
from streamrec.settings import Settings

USERS = 20
SHIPPED_RETRY = RetryPolicy()  # the library default


class ClientLoad:
    """Closed-loop load through `AsyncRecommenderClient` from a thread of its own:
    `concurrency` askers, each sending its next /recommend when the last one is answered."""

    def __init__(
        self,
        urls: Sequence[str],
        users: Sequence[str],
        concurrency: int = 4,
        retry: RetryPolicy = SHIPPED_RETRY,
    ) -> None:
        self.urls = list(urls)
        self.retry = retry
        self.users = list(users)
        self.concurrency = concurrency
        self.latencies_s: list[float] = []
        self.versions: list[str | None] = []  # None: trending, no model yet
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> ClientLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def wait_for(self, answers: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.versions) + len(self.errors) < answers:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError(f"only {len(self.versions)} answers within {timeout_s} s")
            time.sleep(0.05)

    def figures(self) -> dict[str, Any]:
        ms = np.array(self.latencies_s or [0.0]) * 1000
        return {
            "requests": len(self.versions) + len(self.errors),
            "errors": len(self.errors),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1),
        }

    async def _run(self) -> None:
        # A per-try timeout long enough for a loaded 2-core machine: the drills are
        # about failover, not about slowness.
        async with AsyncRecommenderClient(self.urls, 10.0, self.retry) as client:
            await asyncio.gather(*(self._ask(client, n) for n in range(self.concurrency)))

    async def _ask(self, client: AsyncRecommenderClient, n: int) -> None:
        while not self._stop.is_set():
            user = self.users[n % len(self.users)]
            n += self.concurrency
            started = time.perf_counter()
            try:
                answer = await client.recommend(user, k=10)
            except ServingError as exc:
                self.errors.append(repr(exc))
                continue
            self.latencies_s.append(time.perf_counter() - started)
            self.versions.append(answer.model_version)


def seed_users(settings: Settings, items: Sequence[str]) -> list[str]:
    """A few users with clicks, so answers go through the encoder and the ranker."""
    users = [f"drill-user-{n}" for n in range(USERS)]
    events = [e for n, user in enumerate(users) for e in events_for(user, items[n : n + 5])]
    asyncio.run(apply(settings, events))
    return users


def bad_bundles(root: Path, good: str, workdir: Path) -> dict[str, str]:
    """Publish three bundles the server must refuse (none made current); kind -> version."""
    corrupted = republish(root, good, make_current=False).version
    corrupt(root, corrupted)

    other_schema = republish(root, good, make_current=False).version
    path = root / other_schema / registry.MANIFEST
    body = json.loads(path.read_text())
    body["feature_schema_version"] += 1
    path.write_text(json.dumps(body))

    import faiss

    # Checksums and schema are right; the index holds vectors of another width than the
    # encoder's (a bundle assembled from two trainings).
    dim = int(registry.read_manifest(root, good).encoder["dim"])
    index = faiss.read_index(str(root / good / "items.faiss"))
    wider = faiss.IndexFlatIP(dim + 8)
    wider.add(np.random.default_rng(0).random((index.ntotal, dim + 8), dtype=np.float32))
    faiss.write_index(wider, str(workdir / "wider.faiss"))
    shapes = republish(root, good, {"items.faiss": workdir / "wider.faiss"}, False).version
    return {"corrupt": corrupted, "feature_schema": other_schema, "shapes": shapes}


@dataclass
class BadBundleDrill:
    """Drill 4's figures."""

    served_version: str
    versions_seen: list[str | None]
    refused: dict[str, str]  # kind -> the server's reason
    refused_metric: float
    swapped_metric: float
    refusals_logged: int
    load: dict[str, Any] = field(default_factory=dict)


def bad_bundle_drill(settings: Settings, models: TrainedModels, workdir: Path) -> BadBundleDrill:
    """`settings` name an empty registry; a good version is published, served and
    loaded, then each bad bundle becomes CURRENT in turn. The reasons are read with
    the admin token (/model shows them to the admin scope only)."""
    settings = settings.model_copy(
        update={"admin_token": settings.admin_token or secrets.token_hex(16)}
    )
    root = settings.registry
    good = publish(models, root).version
    users = seed_users(settings, list(models.vocab.item_ids))
    url = f"http://127.0.0.1:{settings.serve_port}"
    log_path = workdir / "drill4-serve.log"
    with (
        ServiceProcess(settings, ["serve"], log_path, settings.serve_port) as server,
        ClientLoad([url], users) as load,
    ):
        load.wait_for(50)
        bad = bad_bundles(root, good, workdir)
        for n, version in enumerate(bad.values(), start=1):
            point_current_at(root, version)
            _wait(lambda n=n: _swaps(server, "refused") >= n, f"refusal {n}")
            load.wait_for(len(load.versions) + 20)
        point_current_at(root, good)
        refused = _get_json(f"{url}/model", settings.admin_token)["refused"]
        metrics = server.metrics_text()
    return BadBundleDrill(
        served_version=good,
        versions_seen=sorted(set(load.versions), key=str),
        refused={kind: refused.get(version, "") for kind, version in bad.items()},
        refused_metric=counter_total(metrics, "streamrec_model_swaps", outcome="refused"),
        swapped_metric=counter_total(metrics, "streamrec_model_swaps", outcome="swapped"),
        refusals_logged=sum(" refused, still serving " in line for line in _lines(log_path)),
        load=load.figures(),
    )


@dataclass
class ServerKillDrill:
    """Drill 5's figures."""

    survivor_requests_after_kill: float
    load_before_kill: dict[str, Any]
    load: dict[str, Any] = field(default_factory=dict)


def server_kill_drill(
    settings: Settings,
    models: TrainedModels,
    workdir: Path,
    seconds_after_kill: float = 5.0,
    retry: RetryPolicy = SHIPPED_RETRY,
) -> ServerKillDrill:
    """Two `streamrec serve` processes on their own ports; the client knows both. One is
    SIGKILLed mid-load, then the load goes on for `seconds_after_kill`. (`retry` =
    `RetryPolicy(attempts=1)` shows what the retries save.)"""
    publish(models, settings.registry)
    users = seed_users(settings, list(models.vocab.item_ids))
    ports = [settings.serve_port, free_port()]
    servers = []
    for port in ports:
        log_path = workdir / f"drill5-serve-{port}.log"
        port_settings = settings.model_copy(update={"serve_port": port})
        servers.append(ServiceProcess(port_settings, ["serve"], log_path, port))
    with servers[0] as survivor, servers[1] as victim:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        with ClientLoad(urls, users, retry=retry) as load:
            load.wait_for(100)
            before_kill = load.figures()
            served_before = _requests(survivor)
            victim.kill()
            time.sleep(seconds_after_kill)
        served_after = _requests(survivor) - served_before
    return ServerKillDrill(served_after, before_kill, load.figures())


def _swaps(server: ServiceProcess, outcome: str) -> float:
    return counter_total(server.metrics_text(), "streamrec_model_swaps", outcome=outcome)


def _requests(server: ServiceProcess) -> float:
    return counter_total(server.metrics_text(), "streamrec_serve_requests", endpoint="recommend")


def _wait(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _get_json(url: str, token: str = "") -> dict[str, Any]:
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(
        urllib.request.Request(url, headers=headers), timeout=5
    ) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()
