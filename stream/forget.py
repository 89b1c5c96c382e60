"""Applying requests to forget a user (`users.forget`), after the user's earlier events.

A request names its horizon: per input topic, the end offset of the user's
partition when it was sent. The request waits until this worker has written
every message below it (or the group has committed past it), so no event sent
before the request can be applied after it. Then, in this order, each step
idempotent so a crash anywhere redelivers the request and it runs again:

1. the archive's forget list (from here on no read returns the user's rows);
2. every Redis key of the user;
3. the archive's segment files of the user's partitions, rewritten without them;
4. a tombstone for the user on `recommendations`, and a notice telling the feed.

docs/decisions.md ("Forgetting a user") says why it waits instead of filtering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from stream.catalogue import ItemMessage
from stream.dead_letter import DlqSender
from stream.ingest import IngestPolicy, RawMessage, send_rejections
from stream.redis_waits import RedisWaits
from streamrec.archive import ArchiveWriter, compact, record_forget
from streamrec.errors import ArchiveError
from streamrec.forget import ForgetRequest, Horizon, parse_forget
from streamrec.metrics import IngestMetrics

log = logging.getLogger(__name__)

FORGET_FAILED = "forget_failed"
# How often a request waiting for its horizon looks again, and says it still waits.
POLL_S = 0.02
WAITING_LOG_S = 30.0

# The offset after the last message of (topic, partition) this worker has written.
DoneOffsets = dict[tuple[str, int], int]
# The offset the group last committed for (topic, partition), if this worker knows it.
Committed = Callable[[str, int], int | None]
# The end offsets of the user's partitions now: the horizon of a bare tombstone.
ReadHorizon = Callable[[str], Awaitable[tuple[Horizon, ...]]]
# Tell downstream the user is gone: a tombstone on `recommendations` and a notice to
# the feed on the partition of the user's events.
Announce = Callable[[str, int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ForgetDone:
    """What forgetting one user removed."""

    redis_keys: int
    archive_rows: int

    @property
    def outcome(self) -> str:
        """Label `outcome` of `streamrec_forgets_total`: `forgotten` when anything
        held the user, `absent` for a user never seen (or forgotten already)."""
        return "forgotten" if self.redis_keys or self.archive_rows else "absent"


class Forgetter:
    def __init__(
        self,
        forget_keys: Callable[[str], Awaitable[int]],
        archive: ArchiveWriter | None,
        metrics: IngestMetrics,
        send_dlq: DlqSender,
        policy: IngestPolicy,
        waits: RedisWaits,
        done: DoneOffsets,
        committed: Committed,
        read_horizon: ReadHorizon,
        announce: Announce,
    ) -> None:
        self.forget_keys = forget_keys
        self.archive = archive
        self.metrics = metrics
        self.send_dlq = send_dlq
        self.policy = policy
        self.waits = waits
        self.done = done
        self.committed = committed
        self.read_horizon = read_horizon
        self.announce = announce
        # Set by every forget: the archive's next full pass looks beyond the user's
        # partitions (a producer that keyed an event by something else) and at files
        # deferred while another writer still wrote them.
        self.full_pass_due = True

    async def handle_batch(self, messages: Sequence[ItemMessage]) -> None:
        dead: list[tuple[RawMessage, str, str]] = []
        for item in messages:
            message = item.message
            request = parse_forget(message.key, item.value, item.timestamp_ms)
            if not isinstance(request, ForgetRequest):
                dead.append((message, request.reason.value, request.detail))
                continue
            try:
                done = await self.forget(request, message.partition)
            except RedisError as exc:
                # Not an outage (those are waited out): Redis refused the deletion.
                # The log never names a forgotten user: the coordinates say which request.
                log.error(
                    "forget request %s[%d]@%d failed: %s",
                    message.topic, message.partition, message.offset, exc,
                )  # fmt: skip
                dead.append((message, FORGET_FAILED, f"Redis refused the deletion: {exc}"))
                continue
            self.metrics.forgets.labels(done.outcome).inc()
            log.info(
                "forget request %s[%d]@%d applied: %d Redis keys, %d archive rows",
                message.topic, message.partition, message.offset,
                done.redis_keys, done.archive_rows,
            )  # fmt: skip
        await send_rejections(dead, self.send_dlq, self.policy, self.metrics)
        for _, reason, _ in dead:
            self.metrics.forgets.labels("rejected" if reason != FORGET_FAILED else "failed").inc()

    async def forget(self, request: ForgetRequest, partition: int) -> ForgetDone:
        horizon = request.horizon or await self.read_horizon(request.user_id)
        await self.wait_for(horizon)
        applied_ms = int(time.time() * 1000)
        if self.archive is not None:
            await self._record(request.user_id, applied_ms)
        (removed,) = await self.waits.apply_until_available(self._forget_each, [request.user_id])
        if isinstance(removed, Exception):
            raise removed
        rows = await self._compact({(h.topic, h.partition) for h in horizon})
        self.full_pass_due = True
        await self.announce(request.user_id, horizon[0].partition if horizon else partition)
        if request.requested_ms:
            self.metrics.forget_delay.observe(max(0.0, (applied_ms - request.requested_ms) / 1000))
        return ForgetDone(removed, rows)

    async def wait_for(self, horizon: Sequence[Horizon]) -> None:
        """Until every message below the horizon is written by this worker, or
        committed by the group (written by an earlier owner of the partition)."""
        started = last_said = time.monotonic()
        while True:
            behind = [h for h in horizon if not self._reached(h)]
            if not behind:
                return
            if time.monotonic() - last_said > WAITING_LOG_S:
                last_said = time.monotonic()
                waits_for = ", ".join(f"{h.topic}[{h.partition}] to {h.offset}" for h in behind)
                log.warning(
                    "a forget request has waited %.0f s for %s; is this worker assigned the "
                    "same partitions of the input topics as of users.forget (as many "
                    "partitions in each)?",
                    last_said - started, waits_for,
                )  # fmt: skip
            await asyncio.sleep(POLL_S)

    def _reached(self, horizon: Horizon) -> bool:
        if horizon.offset <= 0:
            return True
        key = (horizon.topic, horizon.partition)
        committed = self.committed(*key) or 0
        return max(self.done.get(key, 0), committed) >= horizon.offset

    async def _forget_each(self, user_ids: list[str]) -> list[int]:
        return [await self.forget_keys(user_id) for user_id in user_ids]

    async def _record(self, user_id: str, applied_ms: int) -> None:
        """The forget list must be written before anything is deleted: retry, never skip."""
        assert self.archive is not None
        backoff_s = 0.1
        while True:
            try:
                await asyncio.to_thread(record_forget, self.archive, user_id, applied_ms)
                return
            except ArchiveError as exc:
                self.metrics.archive_errors.inc()
                log.error("%s; the forget waits, retrying in %.1f s", exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.policy.retry_max_s)

    async def _compact(self, partitions: set[tuple[str, int]] | None) -> int:
        """Rewrite the archive's files of these partitions (all, for None); a failure
        is logged and counted, and the next pass does it (reads filter meanwhile)."""
        if self.archive is None:
            return 0
        try:
            report = await asyncio.to_thread(compact, self.archive, None, partitions)
        except (ArchiveError, OSError) as exc:
            self.metrics.archive_errors.inc()
            log.error("the archive was not rewritten after a forget: %s", exc)
            return 0
        return report.rows_removed

    async def full_pass(self) -> None:
        """Every file of the archive, when a forget since the last such pass asks for it."""
        if self.archive is None or not self.full_pass_due:
            return
        self.full_pass_due = False
        try:
            report = await asyncio.to_thread(compact, self.archive)
        except (ArchiveError, OSError) as exc:
            self.full_pass_due = True
            self.metrics.archive_errors.inc()
            log.error("the archive's forget pass failed: %s", exc)
            return
        self.full_pass_due = report.files_deferred > 0
        if report.rows_removed or report.files_deferred:
            log.info("archive forget pass: %s", report)
