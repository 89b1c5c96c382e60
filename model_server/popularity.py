"""Every catalogue item's stored popularity, held in the server process: a request
takes its candidates' rows from memory instead of a Redis round trip of its own.
Every `serve_popularity_refresh_s` the table reads again only the items whose
popularity changed (the apply script logs them); before a swap (`prepare`) it
carries every row over to the new vocabulary and reads only the items that
vocabulary added; it reads everything when the log cannot tell, and every
FULL_REFRESH_S (items whose keys expired). It holds a table for each version an
experiment's arm serves too (`hold`), refreshed with the current one's."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from redis.exceptions import RedisError

from model_server.polling import Polling
from streamrec.loaded import ModelHolder, ServedModel, vocabulary_map
from streamrec.state import StateStore, decay_popularity

# Keys per script call: Redis serves no one else while a script runs (~4 ms for
# 250 here on a contended core; 1,000 held every request behind it for ~17 ms).
CHUNK_ITEMS = 250
# Reading every item's row (16,766 items: ~300 ms of Redis time here) each second
# was a quarter of a core for Redis per server process: now only at start-up, when
# the change log cannot tell, and this often (an expired item's row goes to 0).
FULL_REFRESH_S = 600.0


@dataclass(frozen=True)
class Snapshot:
    model_version: str  # whose vocabulary rows index `stored`
    rows: dict[str, int]  # that vocabulary: item id → row
    stored: np.ndarray  # (vocab rows, event types, 2); row 0 (padding) is zeros
    seq: int  # the popularity change counter the rows are as of
    full_at_s: float  # monotonic time of the last full read


class PopularityTable:
    def __init__(self, store: StateStore, refresh_s: float, half_life_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.half_life_s = half_life_s
        self._snapshot: Snapshot | None = None
        # Carried over to a version about to swap in (`prepare`), until it serves.
        self._incoming: Snapshot | None = None
        # The versions experiment arms serve beside the current one (`hold`).
        self._arms: dict[str, Snapshot] = {}
        self._polling = Polling(refresh_s, "popularity refresh")

    def rows(self, model: ServedModel, vocab_rows: np.ndarray, now_ms: int) -> np.ndarray | None:
        """Decayed popularity of these vocabulary rows, or None when the table holds
        another version's vocabulary (a swap that did not `prepare`) or nothing yet."""
        stored = self.stored(model, vocab_rows)
        return None if stored is None else decay_popularity(stored, now_ms, self.half_life_s)

    def stored(self, model: ServedModel, vocab_rows: np.ndarray) -> np.ndarray | None:
        """These vocabulary rows as stored (`StateStore.read_stored_popularity`: the
        first event times too), or None as for `rows`."""
        snapshot = self._held(model.version)
        if snapshot is None:
            self._polling.wake()  # a swap: carry the table over now, not in a second
            return None
        rows: np.ndarray = snapshot.stored[vocab_rows]
        return rows

    def _held(self, version: str) -> Snapshot | None:
        """The table for `version`: the serving one's, or the one `prepare` made."""
        for snapshot in (self._snapshot, self._incoming):
            if snapshot is not None and snapshot.model_version == version:
                return snapshot
        return self._arms.get(version)

    async def hold(self, model: ServedModel) -> None:
        """A table for a version an experiment's arm serves (`ModelHolder.before_arm`),
        carried over from the current one's like `prepare`; refreshed by `follow` for
        as long as the holder keeps the arm."""
        self._arms[model.version] = await self._next_snapshot(model)

    async def prepare(self, model: ServedModel) -> None:
        """Carry the table over to `model` before it swaps in (`ModelHolder.before_swap`).
        Without this, the requests right after a swap each read their 200 candidates
        from Redis until the next refresh: at 1,000 req/s that queued Redis, and the
        refresh behind it, for ~250 ms (p99 during a swap 68 ms; one-off probe)."""
        self._incoming = await self._next_snapshot(model)

    async def refresh(self, model: ServedModel) -> None:
        """Read what changed since the last refresh; everything when that cannot be
        told. The counter is read before the rows, so a change made during the
        read is read again next time, never missed."""
        self._snapshot = await self._next_snapshot(model)
        if self._incoming is not None and self._incoming.model_version == model.version:
            self._incoming = None

    async def _next_snapshot(self, model: ServedModel) -> Snapshot:
        # From the table already held for this version, else carried over from the
        # serving one's.
        snapshot = self._held(model.version) or self._snapshot
        if snapshot is None or time.monotonic() - snapshot.full_at_s >= FULL_REFRESH_S:
            return await self._read_all(model)
        seq, changed = await self.store.popularity_changes(snapshot.seq)
        if changed is None or len(changed) > model.n_items // 2:
            return await self._read_all(model)
        rows = model.bundle.rows
        stored = snapshot.stored
        if snapshot.model_version != model.version:
            # Another vocabulary (a retrained version keeps its parent's rows and adds
            # some): every row it shares comes across; only new items are read.
            source = vocabulary_map(snapshot.rows, model.bundle.item_ids)
            stored = stored[source]
            added = np.flatnonzero(source[1:] == 0)
            changed = [*changed, *(model.bundle.item_ids[i] for i in added)]
        else:
            stored = stored.copy()
        known = list(dict.fromkeys(item for item in changed if item in rows))
        if known:
            stored[[rows[item] for item in known]] = await self._read(known)
        return Snapshot(model.version, rows, stored, seq, snapshot.full_at_s)

    async def _read_all(self, model: ServedModel) -> Snapshot:
        started_s = time.monotonic()
        seq, _ = await self.store.popularity_changes(None)
        stored = await self._read(model.bundle.item_ids)
        padding = np.zeros((1, *stored.shape[1:]))
        return Snapshot(
            model.version, model.bundle.rows, np.concatenate([padding, stored]), seq, started_s
        )

    async def _read(self, item_ids: list[str]) -> np.ndarray:
        chunks = [
            await self.store.read_stored_popularity(item_ids[start : start + CHUNK_ITEMS])
            for start in range(0, len(item_ids), CHUNK_ITEMS)
        ]
        return np.concatenate(chunks) if chunks else await self.store.read_stored_popularity([])

    async def follow(self, holder: ModelHolder) -> None:
        """Refresh for the served version until `stop()`; a Redis outage leaves the
        last table in place and the next refresh catches up."""

        async def step() -> None:
            if holder.held is not None:  # a server waiting for its first version
                await self.refresh(holder.held)
            arms = holder.arm_models
            self._arms = {m.version: self._arms[m.version] for m in arms if m.version in self._arms}
            for model in arms:
                await self.hold(model)

        await self._polling.run(step, (RedisError,))

    def stop(self) -> None:
        self._polling.stop()
