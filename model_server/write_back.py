"""What the server writes back after answering (the items shown, for the online hit
rate; fresh user vectors, for the cache), batched: every answer of the last
LINGER_S goes to Redis in one script call, off every request's path. On this VM a
loopback send costs about a millisecond whenever the cores are contended, so a
round trip per request was as dear as the whole ranking stage."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from streamrec.state import StateStore, WriteBack

log = logging.getLogger(__name__)

# How long the writer waits for more answers before writing, and at most how
# many go in one script call (Redis serves no one else while it runs). At 2 ms a
# server at 500 req/s made a write per request or two: the writer's wake-ups, sends
# and Redis calls were a quarter of the server's CPU (docs/decisions.md). A click
# within 20 ms of its answer, or the same user asking again that soon (the vector
# is then computed twice), is rare enough.
LINGER_S = 0.02
BATCH_MAX = 64
# Held while Redis does not answer; beyond this the oldest are dropped (and logged).
PENDING_MAX = 10_000


class WriteBackQueue:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._pending: list[WriteBack] = []
        self._wake = asyncio.Event()
        self._stopped = False

    def add(self, record: WriteBack) -> None:
        self._pending.append(record)
        if len(self._pending) > PENDING_MAX:
            dropped = len(self._pending) - PENDING_MAX
            del self._pending[:dropped]
            log.warning("dropped %d write-backs not yet written (Redis behind)", dropped)
        self._wake.set()

    async def run(self) -> None:
        """Write batches until `stop()`, then write what is left. Stopped by a flag,
        not by cancelling: a cancellation that lands inside redis-py can be lost."""
        while not (self._stopped and not self._pending):
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(LINGER_S)
            batch, self._pending = self._pending, []
            for start in range(0, len(batch), BATCH_MAX):
                try:
                    await self.store.write_back(batch[start : start + BATCH_MAX])
                except RedisError as exc:
                    log.warning("could not write back %d answers: %s", len(batch), exc)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
