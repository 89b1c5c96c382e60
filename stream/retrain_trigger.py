"""Triggering retraining from the stream: every N seconds or M applied events (all
workers together), from the leader worker only, as a process of its own
(`streamrec retrain`), so training never runs on the worker's event loop. The
command's answer is its last line of stdout, one JSON object (the contract is in
docs/operations.md, "`streamrec retrain`: the command contract")."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import orjson
from redis.exceptions import RedisError

from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore

log = logging.getLogger(__name__)


class RetrainTrigger:
    def __init__(self, settings: Settings, state: StateStore, metrics: IngestMetrics) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.last_started_s = time.monotonic()
        self.running: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        """Start a cycle when one is due and none is running. Redis unreachable: try
        again at the next tick (an exception would crash the worker's timer, and with
        it the worker, in the middle of a Redis restart the ingest path rides out)."""
        try:
            await self._tick()
        except RedisError as exc:
            log.warning("retraining trigger: Redis unavailable, next tick retries: %s", exc)

    async def _tick(self) -> None:
        s = self.settings
        if self.running is not None and not self.running.done():
            return
        due_by_time = (
            s.retrain_every_s > 0 and time.monotonic() - self.last_started_s >= s.retrain_every_s
        )
        due_by_events = (
            s.retrain_every_events > 0
            and await self.state.new_event_count() >= s.retrain_every_events
        )
        if not (due_by_time or due_by_events):
            return
        new_events = await self.state.take_new_event_count()
        self.last_started_s = time.monotonic()
        log.info("retraining: %d new events, starting `streamrec retrain`", new_events)
        self.running = asyncio.create_task(self._run())

    async def _run(self) -> None:
        started = time.perf_counter()
        percent = self.settings.retrain_canary_percent
        canary = ["--canary", str(percent)] if percent else []
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "retrain", *canary,
            env=self.settings.child_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await process.communicate()
        outcome, detail = "failed", stderr.decode(errors="replace")[-2000:]
        if process.returncode == 0:
            try:
                result = orjson.loads(stdout.strip().splitlines()[-1])
                outcome, detail = result["outcome"], result["reason"]
            except (orjson.JSONDecodeError, IndexError, KeyError):
                detail = f"unreadable result: {stdout[-500:]!r}"
        self.metrics.retrain.labels(outcome).inc()
        self.metrics.retrain_seconds.observe(time.perf_counter() - started)
        if outcome == "failed":
            log.error("retraining failed (exit %s): %s", process.returncode, detail)
        else:
            log.info("retraining %s: %s", outcome, detail)
