"""Drill 8 as a plain function that returns its figures: a `streamrec serve` process
under closed-loop load (/recommend for users with history and for newcomers,
/score) while its Redis is stopped (SIGSTOP, `frozen_redis`, which the model-server
tests use too) for a few seconds. Every answer must come within the latency budget
plus 50 ms, and the only 5xx is a 503."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.scenarios.models import publish
from bench.scenarios.serving import seed_users
from devtools.devstack import DevStack
from devtools.processes import ServiceProcess
from retrain.training import TrainedModels
from streamrec.settings import Settings


@contextmanager
def frozen_redis(settings: Settings, at_most_s: float = 5.0) -> Iterator[None]:
    """The dev stack's own redis-server stopped (SIGSTOP) and continued after, or after
    `at_most_s` whatever happens: connections stay open and every command waits, as
    with a host that hangs."""
    pid = DevStack(settings.home).status().redis_pid
    if pid is None:
        # Only the tests run against an outside Redis: they skip; the bench has its own.
        import pytest

        pytest.skip("needs the tests' own redis-server (STREAMREC_REDIS_URL is set)")
    thaw = threading.Timer(at_most_s, os.kill, (pid, signal.SIGCONT))
    os.kill(pid, signal.SIGSTOP)
    thaw.start()
    try:
        yield
    finally:
        thaw.cancel()
        os.kill(pid, signal.SIGCONT)


@dataclass(frozen=True)
class Reply:
    sent_s: float  # since the load started
    latency_s: float
    status: int
    kind: str  # the error's kind, or the fallback, or "ranked"


@dataclass
class RedisFreezeDrill:
    budget_ms: float
    frozen_from_s: float
    frozen_until_s: float
    answers: list[Reply] = field(default_factory=list)

    def during_freeze(self) -> list[Reply]:
        return [a for a in self.answers if self.frozen_from_s <= a.sent_s < self.frozen_until_s]

    def figures(self) -> dict[str, Any]:
        def summary(answers: list[Reply]) -> dict[str, Any]:
            ms = np.array([a.latency_s for a in answers] or [0.0]) * 1000
            return {
                "answers": len(answers),
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "max_ms": round(float(ms.max()), 1),
                "by_status": dict(Counter(f"{a.status} {a.kind}" for a in answers)),
            }

        return {
            "budget_ms": self.budget_ms,
            "frozen_s": round(self.frozen_until_s - self.frozen_from_s, 1),
            "all": summary(self.answers),
            "frozen": summary(self.during_freeze()),
        }


class ClosedLoad:
    """Closed loop from a thread: `concurrency` askers, each sending its next request
    (the next in a fixed mix) when the last one is answered."""

    def __init__(self, url: str, users: list[str], items: list[str], concurrency: int) -> None:
        self.url = url
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        for n, user in enumerate(users):
            self.bodies.append(("/recommend", {"user_id": user, "k": 10}))
            self.bodies.append(("/recommend", {"user_id": f"drill-newcomer-{n}", "k": 10}))
            self.bodies.append(("/score", {"user_id": user, "item_ids": items[n : n + 3]}))
        self.concurrency = concurrency
        self.answers: list[Reply] = []
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> ClosedLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now_s(self) -> float:
        return time.perf_counter() - self.started

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:
            await asyncio.gather(*(self._ask(client, n) for n in range(self.concurrency)))

    async def _ask(self, client: httpx.AsyncClient, n: int) -> None:
        while not self._stop.is_set():
            path, body = self.bodies[n % len(self.bodies)]
            n += self.concurrency
            sent_s = self.now_s()
            response = await client.post(path, json=body)
            latency_s = self.now_s() - sent_s
            answer = response.json()
            kind = answer.get("error") or answer.get("fallback") or "ranked"
            self.answers.append(Reply(sent_s, latency_s, response.status_code, kind))


def redis_freeze_drill(
    settings: Settings,
    models: TrainedModels,
    workdir: Path,
    frozen_s: float = 5.0,
    concurrency: int = 2,
) -> RedisFreezeDrill:
    """`settings` name an empty registry and their own port; Redis is the dev stack's own."""
    publish(models, settings.registry)
    items = list(models.vocab.item_ids)
    users = seed_users(settings, items)
    url = f"http://127.0.0.1:{settings.serve_port}"
    log_path = workdir / "drill8-serve.log"
    with (
        ServiceProcess(settings, ["serve"], log_path, settings.serve_port),
        ClosedLoad(url, users, items, concurrency) as load,
    ):
        time.sleep(2.0)
        frozen_from_s = load.now_s()
        with frozen_redis(settings, at_most_s=frozen_s + 5):
            time.sleep(frozen_s)
        frozen_until_s = load.now_s()
        time.sleep(2.0)
    return RedisFreezeDrill(settings.serve_budget_ms, frozen_from_s, frozen_until_s, load.answers)
