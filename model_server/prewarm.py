"""A new version's user vectors, computed before it swaps in.

Every cached user vector (`sr:u:{U}:vec`) belongs to the version that computed it,
so right after a swap each user's next request would run the encoder on its own
(~0.3-0.7 ms each here, on the request's path, all users at once). Instead the
server remembers, for the users it answered most lately, the encoder inputs their
last request used (their known recent events as the serving version's vocabulary
rows, and the state they came from). Once a new version has loaded and before it
swaps in, it maps those rows into the new vocabulary and runs the new encoder on
them in batches of PREWARM_ROUND_USERS, in a thread of its own and paced to at most
a quarter of a core, with no Redis read. The vectors are held in memory, not
written to Redis, where the old version's are still being served. After the swap,
a request whose state is the one remembered takes its vector from here and writes
it back with its answer.

The same for an experiment's arm whose version is not the current one: before
the experiment serves, that version computes the vectors of the users answered
lately whom the experiment assigns to it, so that a canary's users do not each pay
the encoder on their next request (held per arm version, for as long as the
experiment runs).

The inputs are only reused where they are exactly what the new version would
build from that state: every recent event's item known to the old version and the
new one, and the same sequence length. Anyone else is left to the request path.
The swap (or the experiment) waits for this, at most PREWARM_MAX_S.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from streamrec.loaded import ModelHolder, ServedModel, vocabulary_map
from streamrec.metrics import ServeMetrics
from streamrec.state import CachedVector, StoredUser
from streamrec.user_vectors import EncoderInputs, encoded_users, entry_vector, tagged_entry

log = logging.getLogger(__name__)

# Users per encoder call.
PREWARM_ROUND_USERS = 100
# Idle between rounds for this many times a round's length: at most a quarter of a
# core, so requests keep the rest while the new version warms up.
PREWARM_PAUSE_RATIO = 3.0
# A new version swaps in after this long at the latest, warm or not.
PREWARM_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class Encoded:
    """What one user's latest request encoded: the serving version's rows and type ids
    of their recent events (oldest first, at most its `max_len`), how many recent
    events they had, and the state they came from."""

    model_version: str
    state_tag: str
    events: int
    rows: np.ndarray
    type_ids: np.ndarray


class Prewarm:
    def __init__(self, holder: ModelHolder, metrics: ServeMetrics, max_users: int) -> None:
        self.holder = holder
        self.metrics = metrics
        self.max_users = max_users
        self._answered: dict[str, Encoded] = {}  # least lately answered first
        self._warm: tuple[str, dict[str, CachedVector]] = ("", {})  # version, by user
        # The running experiment's arm versions': by version, by user.
        self._arms_warm: dict[str, dict[str, CachedVector]] = {}
        # One thread: encoder calls never overlap, and never hold the event loop.
        self._encoder_thread = ThreadPoolExecutor(1, thread_name_prefix="prewarm")
        holder.before_swap.append(self.warm_up)
        holder.before_arm.append(self.warm_arm)

    def answered(self, model: ServedModel, user: StoredUser, inputs: EncoderInputs) -> None:
        """Remember a request's encoder inputs, when they are the user's whole recent
        history (an item the serving version does not know might be known to the next)."""
        known = model.bundle.rows
        recent = self._answered
        recent.pop(user.user_id, None)
        if all(event.item_id in known for event in user.recent_events):
            recent[user.user_id] = Encoded(
                model.version, user.state_tag, len(user.recent_events), inputs[0][0], inputs[1][0]
            )
            if len(recent) > self.max_users:
                del recent[next(iter(recent))]

    def vector(
        self, model: ServedModel, user: StoredUser
    ) -> tuple[np.ndarray, CachedVector] | None:
        """The (1, dim) vector `model` computed for `user` before it swapped in, and its
        cache entry, when computed from this very state."""
        version, entries = self._warm
        if version != model.version:
            entries = self._arms_warm.get(model.version, {})
        entry = entries.get(user.user_id)
        user_vector = entry_vector(model, user.state_tag, entry)
        return None if user_vector is None or entry is None else (user_vector, entry)

    async def warm_up(self, model: ServedModel) -> None:
        """Compute `model`'s vectors for the users answered lately (the holder awaits
        this between loading a version and swapping it in)."""
        entries = await self._warmed(model, lambda user_id: True)
        if entries is not None:
            self._warm = (model.version, entries)

    async def warm_arm(self, model: ServedModel) -> None:
        """Compute the vectors of an arm's version for the users answered lately whom
        the arriving experiment assigns to it (the holder awaits this before the
        experiment serves); the other arms' versions warmed before are let go."""
        experiment = self.holder.arriving
        if experiment is None:
            return
        pinned = experiment.pinned_versions()
        self._arms_warm = {v: held for v, held in self._arms_warm.items() if v in pinned}
        entries = await self._warmed(
            model, lambda user_id: experiment.arm_of(user_id).version == model.version
        )
        if entries is not None:
            self._arms_warm[model.version] = entries

    async def _warmed(
        self, model: ServedModel, wanted: Callable[[str], bool]
    ) -> dict[str, CachedVector] | None:
        """`model`'s vectors for the `wanted` users answered lately by the serving
        version; None before any version serves."""
        serving = self.holder.held
        if serving is None:
            return None
        started = time.monotonic()
        # Serving version's row → new version's row (0: the new one lacks the item).
        remap = vocabulary_map(model.bundle.rows, serving.bundle.item_ids)
        users = [
            (user_id, answered)
            for user_id, answered in reversed(self._answered.items())
            if answered.model_version == serving.version and wanted(user_id)
        ]
        entries: dict[str, CachedVector] = {}
        skipped = 0
        for start in range(0, len(users), PREWARM_ROUND_USERS):
            if time.monotonic() - started >= PREWARM_MAX_S:
                log.warning("warming %s stopped after %.0f s", model.version, PREWARM_MAX_S)
                break
            round_started = time.perf_counter()
            batch, sequences = [], []
            for user_id, answered in users[start : start + PREWARM_ROUND_USERS]:
                rows = remap[answered.rows]
                if not rows.all() or len(rows) != min(answered.events, model.bundle.max_len):
                    skipped += 1  # not what the new version would build: left to requests
                    continue
                batch.append((user_id, answered.state_tag))
                sequences.append(list(zip(rows.tolist(), answered.type_ids.tolist(), strict=True)))
            if batch:
                loop = asyncio.get_running_loop()
                user_vectors = await loop.run_in_executor(
                    self._encoder_thread, encoded_users, model, sequences
                )
                for (user_id, state_tag), user_vector in zip(batch, user_vectors, strict=True):
                    entries[user_id] = tagged_entry(model, state_tag, user_vector)
                self.metrics.vector_refreshes.labels("refreshed").inc(len(batch))
            spent_s = time.perf_counter() - round_started
            self.metrics.vector_refresh_seconds.observe(spent_s)
            await asyncio.sleep(spent_s * PREWARM_PAUSE_RATIO)
        self.metrics.vector_refreshes.labels("skipped").inc(skipped)
        log.info(
            "%s: %d users' vectors ready in %.1f s (%d left to requests)",
            model.version,
            len(entries),
            time.monotonic() - started,
            skipped,
        )
        return entries
