"""Applying requests to forget a user (`users.forget`), after the user's earlier events.

A request names its horizon: per input topic, the end offset of the user's
partition when it was sent. The request waits until the group has committed
every partition of it that far (Faust commits an offset only once every message
before it is written), so no event sent before the request can be applied
after it. Then, in this order, each step idempotent, so that a crash anywhere
redelivers the request and it runs again:

1. the archive's forget list (from here on no read returns the user's rows);
2. every Redis key of the user (one SCAN for a batch of requests);
3. the archive's segment files that name the user, rewritten without them (once
   for a batch of requests);
4. a tombstone for the user on `recommendations`, and a notice telling the feed.

docs/decisions.md ("a forget waits for the user's earlier events") says why it
waits instead of filtering events. A horizon that could never be reached (another
topic, a partition or offset that does not exist) is refused to the DLQ: it
would stop this agent for good.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import faust
from faust.types import TP, EventT
from redis.exceptions import RedisError

from stream.catalogue import ItemMessage, item_message
from stream.dead_letter import DlqSender
from stream.ingest import IngestPolicy, RawMessage, send_rejections
from stream.overlap import OverlappedWriter
from stream.redis_waits import RedisWaits
from streamrec.archive import ArchiveWriter, compact, record_forget, user_digest
from streamrec.errors import ArchiveError, StreamrecError
from streamrec.events import RejectReason
from streamrec.forget import (
    ForgetRequest,
    Horizon,
    PartitionOffsets,
    group_committed,
    parse_forget,
)
from streamrec.metrics import IngestMetrics
from streamrec.notices import StateChanges
from streamrec.producer import SCHEMA_HEADERS
from streamrec.settings import Settings
from streamrec.state import StateStore

log = logging.getLogger(__name__)

Arg = TypeVar("Arg")
Answer = TypeVar("Answer")

FORGET_FAILED = "forget_failed"
# How often a request waiting for its horizon looks again, and says it still waits.
POLL_S = 0.1
WAITING_LOG_S = 30.0

# The offset the group committed for (topic, partition): below it, every message is
# written (Faust commits only offsets acknowledged after their write, contiguously).
Committed = Callable[[str, int], Awaitable[int | None]]
# The end offsets of the user's partitions now: the horizon of a bare tombstone.
ReadHorizon = Callable[[str], Awaitable[tuple[Horizon, ...]]]
# Why a horizon can never be reached (`streamrec.forget.PartitionOffsets.problem`), or None.
CheckHorizon = Callable[[tuple[Horizon, ...]], Awaitable[str | None]]
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


@dataclass(frozen=True, slots=True)
class _Listed:
    """A request waited for and on the forget list, its horizon known."""

    request: ForgetRequest
    partition: int  # of the user's events, for the feed's notice
    applied_ms: int


class Forgetter:
    def __init__(
        self,
        forget_keys: Callable[[list[str]], Awaitable[list[int]]],
        archive: ArchiveWriter | None,
        metrics: IngestMetrics,
        send_dlq: DlqSender,
        policy: IngestPolicy,
        waits: RedisWaits,
        committed: Committed,
        read_horizon: ReadHorizon,
        check_horizon: CheckHorizon,
        announce: Announce,
    ) -> None:
        self.forget_keys = forget_keys
        self.archive = archive
        self.metrics = metrics
        self.send_dlq = send_dlq
        self.policy = policy
        self.waits = waits
        self.committed = committed
        self.read_horizon = read_horizon
        self.check_horizon = check_horizon
        self.announce = announce
        # Users forgotten since the archive's last pass over every file: it looks
        # beyond their partitions (an event a producer keyed by something else) and
        # at files deferred while another writer still wrote them. In memory only:
        # after a restart such rows stay on disk, hidden, until retention.
        self.pending_users: set[str] = set()

    async def handle_batch(self, messages: Sequence[ItemMessage]) -> None:
        dead: list[tuple[RawMessage, str, str]] = []
        judged: list[tuple[RawMessage, ForgetRequest]] = []
        for item in messages:
            message = item.message
            request = parse_forget(message.key, item.value, item.timestamp_ms)
            if not isinstance(request, ForgetRequest):
                dead.append((message, request.reason.value, request.detail))
                continue
            problem = await self._kafka(self.check_horizon, request.horizon)
            if problem is not None:
                dead.append((message, RejectReason.BAD_VALUE.value, problem))
                continue
            judged.append((message, request))
        results = await self.forget_all([(request, m.partition) for m, request in judged])
        for (message, _), done in zip(judged, results, strict=True):
            # The log never names a forgotten user: the coordinates say which request.
            if isinstance(done, RedisError):
                # Not an outage (those are waited out): Redis refused the deletion.
                log.error(
                    "forget request %s[%d]@%d failed: %s",
                    message.topic, message.partition, message.offset, done,
                )  # fmt: skip
                dead.append((message, FORGET_FAILED, f"Redis refused the deletion: {done}"))
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
        """One request, whole: `forget_all` of one."""
        (done,) = await self.forget_all([(request, partition)])
        if isinstance(done, RedisError):
            raise done
        return done

    async def forget_all(
        self, requests: Sequence[tuple[ForgetRequest, int]]
    ) -> list[ForgetDone | RedisError]:
        """Each request in order waits for its horizon and goes on the forget list;
        then, for them all at once, Redis (one SCAN), the archive (one rewrite: a
        burst of requests reads the files once) and their tombstones. Per request
        what it removed, or the error Redis answered for its deletion."""
        listed = [await self._list(request, partition) for request, partition in requests]
        users = list(dict.fromkeys(item.request.user_id for item in listed))
        outcomes = await self.waits.apply_until_available(self.forget_keys, users) if users else []
        removed: dict[str, int | RedisError] = {}
        for user_id, outcome in zip(users, outcomes, strict=True):
            if isinstance(outcome, Exception) and not isinstance(outcome, RedisError):
                raise outcome
            removed[user_id] = outcome
        cleared = {u for u, keys in removed.items() if not isinstance(keys, RedisError)}
        partitions = {(h.topic, h.partition) for item in listed for h in item.request.horizon}
        rows = await self._compact(cleared, partitions) if cleared else {}
        self.pending_users |= cleared
        results: list[ForgetDone | RedisError] = []
        for item in listed:
            keys = removed[item.request.user_id]
            if isinstance(keys, RedisError):
                results.append(keys)
                continue
            await self.announce(item.request.user_id, item.partition)
            if item.request.requested_ms:
                delay_s = (item.applied_ms - item.request.requested_ms) / 1000
                self.metrics.forget_delay.observe(max(0.0, delay_s))
            results.append(ForgetDone(keys, rows.get(user_digest(item.request.user_id), 0)))
        return results

    async def _list(self, request: ForgetRequest, partition: int) -> _Listed:
        if not request.horizon:
            horizon = await self._kafka(self.read_horizon, request.user_id)
            request = replace(request, horizon=horizon)
        await self.wait_for(request.horizon)
        applied_ms = int(time.time() * 1000)
        if self.archive is not None:
            await self._record(request.user_id, applied_ms)
        events_partition = request.horizon[0].partition if request.horizon else partition
        return _Listed(request, events_partition, applied_ms)

    async def _kafka(self, ask: Callable[[Arg], Awaitable[Answer]], arg: Arg) -> Answer:
        """Ask Kafka until it answers: the request waits, as ingestion does in an outage."""
        backoff_s = 0.1
        while True:
            try:
                return await ask(arg)
            except StreamrecError as exc:
                log.warning(
                    "a forget request waits for Kafka (%s); again in %.1f s", exc, backoff_s
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.policy.retry_max_s)

    async def wait_for(self, horizon: Sequence[Horizon]) -> None:
        """Until the group has committed every partition of the horizon up to it: each
        message below is written (in Redis and the archive, or in the DLQ)."""
        started = last_said = time.monotonic()
        while True:
            behind = [h for h in horizon if not await self._reached(h)]
            if not behind:
                return
            if time.monotonic() - last_said > WAITING_LOG_S:
                last_said = time.monotonic()
                waits_for = ", ".join(f"{h.topic}[{h.partition}] to {h.offset}" for h in behind)
                log.warning(
                    "a forget request has waited %.0f s for %s to be committed",
                    last_said - started, waits_for,
                )  # fmt: skip
            await asyncio.sleep(POLL_S)

    async def _reached(self, horizon: Horizon) -> bool:
        if horizon.offset <= 0:
            return True
        committed = await self.committed(horizon.topic, horizon.partition)
        return committed is not None and committed >= horizon.offset

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

    async def _compact(
        self, users: set[str], partitions: set[tuple[str, int]] | None
    ) -> dict[str, int]:
        """Rewrite the archive's files of these partitions (all, for None) that hold
        these users' rows; rows removed per user digest. A failure is logged and
        counted, and the next pass does it (reads filter meanwhile)."""
        if self.archive is None:
            return {}
        try:
            report = await asyncio.to_thread(compact, self.archive, None, partitions, None, users)
        except (ArchiveError, OSError) as exc:
            self.metrics.archive_errors.inc()
            log.error("the archive was not rewritten after a forget: %s", exc)
            return {}
        if partitions is None and report.files_deferred == 0:
            self.pending_users -= users
        return report.rows_by_user

    async def full_pass(self) -> None:
        """Every file of the archive, for the users forgotten since the last such pass."""
        if self.pending_users:
            await self._compact(set(self.pending_users), None)


class CommittedOffsets:
    """Where the group's commits stand: Faust's own figure for the partitions this
    worker holds (read at assignment, moved by each commit), the broker's, asked at
    most once a second, for the others (`users.forget` partitioned unlike the input
    topics, so another worker holds the user's events)."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._asked_at = -math.inf
        self._from_broker: dict[tuple[str, int], int] = {}

    async def __call__(self, topic: str, partition: int) -> int | None:
        tp = TP(topic, partition)
        if tp in self.app.consumer.assignment():
            # Faust keeps it per assigned partition; it has no public getter.
            offsets: dict[TP, int | None] = getattr(self.app.consumer, "_committed_offset", {})
            return offsets.get(tp)
        if time.monotonic() - self._asked_at > 1.0:
            self._asked_at = time.monotonic()
            try:
                self._from_broker = await asyncio.to_thread(group_committed, self.settings)
            except StreamrecError as exc:
                log.warning("the group's committed offsets were not read: %s", exc)
        return self._from_broker.get((topic, partition))


def add_forget_agent(
    app: faust.App,
    settings: Settings,
    state: StateStore,
    archive: ArchiveWriter | None,
    metrics: IngestMetrics,
    send_dlq: DlqSender,
    waits: RedisWaits,
    changes: faust.types.TopicT,
    batches: Callable[[faust.StreamT[bytes]], AsyncIterator[Sequence[EventT[bytes]]]],
) -> Forgetter:
    """The worker's agent on `users.forget` (stream/app.py builds the rest)."""
    recommendations = app.topic(
        settings.topic_recommendations, key_serializer="raw", value_serializer="raw"
    )

    async def announce(user_id: str, partition: int) -> None:
        # The tombstone lets a compacted `recommendations` drop the user; the notice
        # tells the feed, after the notices of the user's earlier events.
        sent = [
            await recommendations.send(key=user_id.encode(), value=None, headers=SCHEMA_HEADERS)
        ]
        if settings.emit_state_changes:
            notice = StateChanges(partition, {}, int(time.time() * 1000), (user_id,))
            sent.append(
                await changes.send(
                    value=notice.to_json(), partition=partition, headers=SCHEMA_HEADERS
                )
            )
        await asyncio.gather(*sent)

    # One consumer for the agent's questions about offsets, held open: a burst of
    # requests asks it once each.
    offsets = PartitionOffsets(settings)

    async def horizon_now(user_id: str) -> tuple[Horizon, ...]:
        return await asyncio.to_thread(offsets.horizon, user_id)

    async def check_horizon(horizon: tuple[Horizon, ...]) -> str | None:
        return await asyncio.to_thread(offsets.problem, horizon)

    forgetter = Forgetter(
        state.forget_users, archive, metrics, send_dlq, IngestPolicy.from_settings(settings),
        waits, CommittedOffsets(app, settings), horizon_now, check_horizon, announce,
    )  # fmt: skip
    source = app.topic(
        settings.topic_users_forget,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(source, name="forget")
    async def apply_forgets(stream: faust.StreamT[bytes]) -> None:
        # A request may be a bare tombstone (null value): kept apart from an empty
        # value, as the catalogue's records are.
        writer = OverlappedWriter(app, forgetter.handle_batch, item_message)
        await writer.consume(batches(stream), settings.worker_shutdown_timeout_s / 3)

    return forgetter
