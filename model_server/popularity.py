"""Every catalogue item's stored popularity, held in the server process and read
again from Redis every `serve_popularity_refresh_s`: a request takes its
candidates' rows from memory instead of a Redis round trip of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import numpy as np
from redis.exceptions import RedisError

from streamrec.loaded import ModelHolder, ServedModel
from streamrec.state import StateStore, decay_popularity

log = logging.getLogger(__name__)

# Keys per script call: Redis serves no one else while a script runs (~1 ms here).
CHUNK_ITEMS = 1000


@dataclass(frozen=True)
class Snapshot:
    model_version: str  # whose vocabulary rows index `stored`
    stored: np.ndarray  # (vocab rows, event types, 2); row 0 (padding) is zeros


class PopularityTable:
    def __init__(self, store: StateStore, refresh_s: float, half_life_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.half_life_s = half_life_s
        self._snapshot: Snapshot | None = None
        self._stopped = asyncio.Event()

    def rows(self, model: ServedModel, vocab_rows: np.ndarray, now_ms: int) -> np.ndarray | None:
        """Decayed popularity of these vocabulary rows, or None when the table holds
        another version's vocabulary (just after a swap) or nothing yet."""
        snapshot = self._snapshot
        if snapshot is None or snapshot.model_version != model.version:
            return None
        return decay_popularity(snapshot.stored[vocab_rows], now_ms, self.half_life_s)

    async def refresh(self, model: ServedModel) -> None:
        item_ids = model.bundle.item_ids
        chunks = [
            await self.store.read_stored_popularity(item_ids[start : start + CHUNK_ITEMS])
            for start in range(0, len(item_ids), CHUNK_ITEMS)
        ]
        padding = np.zeros((1, *chunks[0].shape[1:])) if chunks else np.zeros((1, 0, 2))
        self._snapshot = Snapshot(model.version, np.concatenate([padding, *chunks]))

    async def follow(self, holder: ModelHolder) -> None:
        """Refresh for the served version until `stop()`; a Redis outage leaves the
        last table in place and the next refresh catches up. Stopped by a flag, not
        by cancelling: a cancellation that lands inside redis-py can be lost."""
        while not self._stopped.is_set():
            try:
                await self.refresh(holder.current)
            except RedisError as exc:
                log.warning("popularity refresh failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.refresh_s)

    def stop(self) -> None:
        self._stopped.set()
