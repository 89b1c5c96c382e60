"""Waiting out a Redis that takes no writes: the retry loop every agent's writes go
through, and what the worker says about it (`/readyz`, `streamrec_state_write_blocked`).

While Redis is unreachable or refuses writes for reasons of its own (full,
read-only, loading, busy: `streamrec.state.unavailable_reason`) the records not
applied yet are sent again with backoff. An outage refuses a script call before
its first write, so each record is applied exactly once; waiting keeps the
batch's offsets uncommitted meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.exceptions import RedisError, ResponseError

from streamrec.metrics import IngestMetrics
from streamrec.state import UNAVAILABLE_REASONS, unavailable_reason

log = logging.getLogger(__name__)

Record = TypeVar("Record")
Outcome = TypeVar("Outcome")
# Applies records in one round trip: per record its outcome, or the error Redis
# answered for the script call that held it.
Write = Callable[[list[Record]], Awaitable[Sequence[Outcome | RedisError]]]


class RedisWaits:
    """The writes of one worker that wait for Redis, and why; shared by its agents,
    so the gauge and `/readyz` speak for all of them."""

    def __init__(self, metrics: IngestMetrics, retry_max_s: float) -> None:
        self.metrics = metrics
        self.retry_max_s = retry_max_s
        self._blocked: dict[object, str] = {}

    @property
    def unavailable(self) -> str | None:
        """Why Redis takes no writes from this worker now (None: it does)."""
        return next(iter(self._blocked.values()), None)

    async def apply_until_available(
        self, write: Write[Record, Outcome], records: Sequence[Record]
    ) -> list[Outcome | Exception]:
        """Per record its outcome, or the error Redis answered for what it held (not
        an outage: the caller's to judge). Outages are waited out here."""
        by_index: dict[int, Outcome | Exception] = {}
        pending = list(range(len(records)))
        backoff_s = 0.05
        waiting = object()  # this call, among the writes in flight
        try:
            while True:
                started = time.perf_counter()
                results: list[Outcome | Exception]
                try:
                    results = list(await write([records[i] for i in pending]))
                except (RedisError, OSError) as exc:
                    if unavailable_reason(exc) is None and not isinstance(exc, ResponseError):
                        raise
                    results = [exc] * len(pending)
                else:
                    self.metrics.state_write.observe(time.perf_counter() - started)
                retry: list[int] = []
                for index, result in zip(pending, results, strict=True):
                    reason = unavailable_reason(result) if isinstance(result, Exception) else None
                    if reason is None:
                        by_index[index] = result
                    else:
                        retry.append(index)
                        why, error = reason, result
                if not retry:
                    return [by_index[i] for i in range(len(records))]
                self._blocked_by(waiting, why)
                self.metrics.state_write_retries.inc()
                log.warning(
                    "Redis takes no writes (%s: %s); %d records wait, retrying in %.2f s",
                    why, error, len(retry), backoff_s,
                )  # fmt: skip
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.retry_max_s)
                pending = retry
        finally:
            self._blocked_by(waiting, None)

    def _blocked_by(self, call: object, reason: str | None) -> None:
        if reason is None:
            self._blocked.pop(call, None)
        else:
            self._blocked[call] = reason
        now = set(self._blocked.values())
        for name in UNAVAILABLE_REASONS:
            self.metrics.state_write_blocked.labels(name).set(1 if name in now else 0)
