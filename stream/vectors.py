"""Refreshing the cached user vector (`sr:u:{U}:vec`) after each batch, off the ingest path.

Once a batch is in Redis the ingestor hands its users here and goes on. A background
task reads what the encoder needs of their state in one round trip
(`StateStore.read_vector_inputs`), runs the encoder on them in a thread of its own
(`encoded_users`: one call per group of users of like history length), and writes
every vector with the tag the model server checks (`streamrec/user_vectors.py`), so
the server's next request for them skips the encoder.
Nothing here can fail or slow a batch: errors are logged and counted, and a vector
not written only costs the server one encoder call. A user whose state moved on in
the meantime gets a vector tagged with the older state, which the server ignores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from redis.exceptions import RedisError

from streamrec.loaded import ModelHolder, ServedModel
from streamrec.metrics import IngestMetrics
from streamrec.state import StateStore, WriteBack
from streamrec.user_vectors import encoded_users, entry_vector, known_items, tagged_entry

log = logging.getLogger(__name__)

# Users per round: one Redis transaction and one encoder call each.
ROUND_MAX_USERS = 500
# Users waiting while the rounds fall behind the stream; beyond this the oldest are
# dropped (the server computes their vectors when asked).
PENDING_MAX = 20_000


class VectorRefresher:
    def __init__(self, store: StateStore, holder: ModelHolder, metrics: IngestMetrics) -> None:
        self.store = store
        self.holder = holder
        self.metrics = metrics
        self._pending: dict[str, None] = {}  # an ordered set: oldest first
        self._wake = asyncio.Event()
        self._stopped = False
        # One thread: encoder calls never overlap, and never hold the event loop.
        self._encoder_thread = ThreadPoolExecutor(1, thread_name_prefix="user-vectors")

    def add(self, user_ids: Iterable[str]) -> None:
        """Users whose state a batch has just changed (called after it is in Redis)."""
        if self.holder.held is None:
            return  # no model yet: nothing to compute
        self._pending.update(dict.fromkeys(user_ids))
        excess = len(self._pending) - PENDING_MAX
        if excess > 0:
            for user_id in list(self._pending)[:excess]:
                del self._pending[user_id]
            self.metrics.vector_refreshes.labels("dropped").inc(excess)
            log.warning("user vector refresh behind: dropped %d users", excess)
        self._wake.set()

    async def run(self) -> None:
        """Refresh rounds until `stop()`. Stopped by a flag, not by cancelling: a
        cancellation that lands inside redis-py can be lost."""
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and not self._stopped:
                user_ids = list(self._pending)[:ROUND_MAX_USERS]
                for user_id in user_ids:
                    del self._pending[user_id]
                await self.refresh(user_ids)
        self._encoder_thread.shutdown(wait=False)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def refresh(self, user_ids: list[str]) -> None:
        """One round; counts every user by outcome and never raises."""
        model = self.holder.held
        if model is None or not user_ids:
            return
        started = time.perf_counter()
        try:
            outcomes = await self._refresh(model, user_ids)
        except (RedisError, OSError) as exc:
            self.metrics.vector_refreshes.labels("failed").inc(len(user_ids))
            log.warning("user vectors of %d users not refreshed: %s", len(user_ids), exc)
            return
        except Exception:  # onnxruntime raises its own untyped errors
            self.metrics.vector_refreshes.labels("failed").inc(len(user_ids))
            log.exception(
                "user vectors of %d users not refreshed (model %s)", len(user_ids), model.version
            )
            return
        self.metrics.vector_refresh_seconds.observe(time.perf_counter() - started)
        for outcome, count in outcomes.items():
            self.metrics.vector_refreshes.labels(outcome).inc(count)

    async def _refresh(self, model: ServedModel, user_ids: list[str]) -> dict[str, int]:
        users = await self.store.read_vector_inputs(user_ids)
        stale, inputs = [], []
        cached = trending = 0
        for user in users:
            if entry_vector(model, user.state_tag, user.cached_vector) is not None:
                cached += 1  # a redelivered batch, or the server was first
                continue
            known = known_items(model, user.recent)
            if not known:
                trending += 1  # the server answers this user from trending items
                continue
            stale.append(user)
            inputs.append(known)
        outcomes = {"cached": cached, "trending": trending, "refreshed": len(stale)}
        if not stale:
            return outcomes
        loop = asyncio.get_running_loop()
        user_vectors = await loop.run_in_executor(
            self._encoder_thread, encoded_users, model, inputs
        )
        # The server's own write-back (one script call, the same TTL), with no items shown.
        now_ms = int(time.time() * 1000)
        await self.store.write_back(
            [
                WriteBack(user.user_id, (), now_ms, tagged_entry(model, user.state_tag, vector))
                for user, vector in zip(stale, user_vectors, strict=True)
            ]
        )
        return outcomes
