"""Folding one batch of raw messages into Redis state, with nothing lost.

The batch is parsed; rejections go to the DLQ (`stream/dead_letter.py`); accepted
events are written in one Redis pipeline. While Redis is unreachable or takes no
writes (full, read-only, loading, busy) the batch waits: an outage is never an
event's fault. The caller acks the batch only after this returns, so a crash
before then means redelivery, and dedup by `event_id` makes redelivery harmless.
Once the state is written the batch's users go to `state_written` (the cached
vector refresh), which never blocks it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from stream.dead_letter import DlqSender, dead_letter, send_dead_letters
from stream.producer_faults import ConflictLog, KeyCheck
from stream.redis_waits import RedisWaits
from streamrec.archive import ArchivedEvent, ArchiveWriter
from streamrec.errors import ArchiveError
from streamrec.events import MAX_FUTURE_SKEW_MS, Event, Rejection, parse_event
from streamrec.metrics import IngestMetrics
from streamrec.notices import StateChanges
from streamrec.settings import Settings
from streamrec.state import Applied, StateStore

log = logging.getLogger(__name__)

STATE_WRITE_FAILED = "state_write_failed"
# Label `outcome` of `streamrec_events_total` for each result of the apply script.
OUTCOME_NAMES = {
    Applied.APPLIED: "accepted",
    Applied.HIT: "accepted",
    Applied.DUPLICATE: "duplicate",
    Applied.CONFLICT: "conflict",
}
MAX_DETAIL_CHARS = 1000


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    """The limits and retry bounds one worker applies (from `Settings`)."""

    max_message_bytes: int = 64 * 1024
    retry_max_s: float = 5.0
    dlq_max_record_bytes: int = 1_000_000
    max_future_ms: int = MAX_FUTURE_SKEW_MS

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestPolicy:
        return cls(
            max_message_bytes=settings.max_message_bytes,
            retry_max_s=settings.redis_retry_max_s,
            dlq_max_record_bytes=settings.dlq_max_record_bytes,
            max_future_ms=settings.max_future_skew_s * 1000,
        )


@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_s: float | None


ChangeNotifier = Callable[[list[StateChanges]], Awaitable[None]]
# Told the users of each batch once it is in Redis; must return at once and never raise.
StateWritten = Callable[[Iterable[str]], None]


def _written(
    accepted: list[tuple[RawMessage, Event]], failed: list[tuple[RawMessage, str]]
) -> list[tuple[RawMessage, Event]]:
    """The accepted events that are in Redis (applied or duplicates)."""
    if not failed:
        return accepted
    failed_offsets = {(m.topic, m.partition, m.offset) for m, _ in failed}
    return [
        (message, event)
        for message, event in accepted
        if (message.topic, message.partition, message.offset) not in failed_offsets
    ]


def _is_applied(outcome: Applied | Exception) -> bool:
    return isinstance(outcome, Applied)


def dlq_headers(message: RawMessage, reason: str, detail: str) -> list[tuple[str, bytes]]:
    return [
        ("streamrec.reason", reason.encode()),
        ("streamrec.detail", detail[:MAX_DETAIL_CHARS].encode()),
        ("streamrec.source.topic", message.topic.encode()),
        ("streamrec.source.partition", str(message.partition).encode()),
        ("streamrec.source.offset", str(message.offset).encode()),
    ]


class Ingestor:
    def __init__(
        self,
        state: StateStore,
        metrics: IngestMetrics,
        send_dlq: DlqSender,
        policy: IngestPolicy,
        archive: ArchiveWriter | None = None,
        notify_changes: ChangeNotifier | None = None,
        state_written: StateWritten | None = None,
        waits: RedisWaits | None = None,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.send_dlq = send_dlq
        self.policy = policy
        self.archive = archive
        self.notify_changes = notify_changes
        self.state_written = state_written
        # Writes in flight that wait for Redis, and why: shared with the worker's other agents.
        self.waits = waits or RedisWaits(metrics, policy.retry_max_s)
        self.keys = KeyCheck(metrics)
        self.conflicts = ConflictLog()

    async def handle_batch(self, messages: Sequence[RawMessage]) -> None:
        self.metrics.batch_events.observe(len(messages))
        now_ms = int(time.time() * 1000)
        policy = self.policy
        accepted, dead = split_parsed(
            (
                message,
                parse_event(
                    message.value,
                    policy.max_message_bytes,
                    now_ms=now_ms,
                    max_future_ms=policy.max_future_ms,
                ),
            )
            for message in messages
        )
        self.keys.check(accepted)

        failed = await self._write_state(accepted)
        written = _written(accepted, failed)
        if self.state_written is not None and written:
            # Duplicates too: a redelivered batch's users may have no vector yet.
            self.state_written(event.user_id for _, event in written)
        dead.extend((message, STATE_WRITE_FAILED, detail) for message, detail in failed)
        await self._dead_letter(dead)
        await self._notify(written)

    async def _write_state(
        self, accepted: list[tuple[RawMessage, Event]]
    ) -> list[tuple[RawMessage, str]]:
        if not accepted:
            return []
        outcomes = await self._apply_until_available([event for _, event in accepted])
        applied = [(pair, o) for pair, o in zip(accepted, outcomes, strict=True) if _is_applied(o)]
        refused = [pair for pair, o in zip(accepted, outcomes, strict=True) if not _is_applied(o)]
        self._observe([pair for pair, _ in applied], [cast(Applied, o) for _, o in applied])
        # A conflict is not what was applied under its id: the archive keeps the first.
        self._archive([pair for pair, o in applied if o != Applied.CONFLICT])
        if not refused:
            return []
        # Redis refused a script call for what it held (not an outage): find the
        # culprit one by one so the rest still lands and the culprit reaches the DLQ.
        log.error("%d events refused by Redis; applying them one at a time", len(refused))
        return await self._write_one_by_one(refused)

    async def _write_one_by_one(
        self, accepted: list[tuple[RawMessage, Event]]
    ) -> list[tuple[RawMessage, str]]:
        failed = []
        for message, event in accepted:
            (outcome,) = await self._apply_until_available([event])
            if not isinstance(outcome, Applied):
                log.error(
                    "event %s at %s[%d]@%d refused by Redis: %s",
                    event.event_id, message.topic, message.partition, message.offset, outcome,
                )  # fmt: skip
                failed.append((message, f"Redis refused the write: {outcome}"))
                continue
            self._observe([(message, event)], [outcome])
            if outcome != Applied.CONFLICT:
                self._archive([(message, event)])
        return failed

    async def _apply_until_available(self, events: list[Event]) -> list[Applied | Exception]:
        """Per event its outcome, or the error Redis answered for what it held; an
        outage is waited out (`stream/redis_waits.py`)."""
        return await self.waits.apply_until_available(self.state.apply_events_each, events)

    @property
    def state_unavailable(self) -> str | None:
        """Why Redis takes no writes from this worker now (None: it does)."""
        return self.waits.unavailable

    async def _notify(self, written: list[tuple[RawMessage, Event]]) -> None:
        """One notice per input partition the batch touched, listing its users
        (duplicates included: after a crash the redelivered batch must still
        announce the change it made)."""
        if self.notify_changes is None or not written:
            return
        by_partition: dict[int, dict[str, int]] = {}
        for message, event in written:
            users = by_partition.setdefault(message.partition, {})
            users[event.user_id] = max(users.get(event.user_id, event.ts_ms), event.ts_ms)
        now_ms = int(time.time() * 1000)
        await self.notify_changes(
            [StateChanges(p, users, now_ms) for p, users in sorted(by_partition.items())]
        )

    def _archive(self, written: list[tuple[RawMessage, Event]]) -> None:
        """Duplicates too: a crash between the Redis write and this one replays the
        batch as duplicates, and the archive's reader drops repeated event ids."""
        if self.archive is None:
            return
        arrived_ms = int(time.time() * 1000)
        try:
            count = self.archive.append(
                ArchivedEvent(event, m.topic, m.partition, m.offset, arrived_ms)
                for m, event in written
            )
        except ArchiveError as exc:
            # Real-time state matters more than the archive: count, log, go on.
            self.metrics.archive_errors.inc()
            log.error("%s; %d events not archived", exc, len(written))
            return
        self.metrics.archived.inc(count)

    def _observe(self, accepted: list[tuple[RawMessage, Event]], applied: list[Applied]) -> None:
        now_s = time.time()
        outcomes: Counter[tuple[str, str]] = Counter()
        observe_delay = self.metrics.event_to_state.observe
        hits = 0
        for (message, event), outcome in zip(accepted, applied, strict=True):
            outcomes[(event.type.value, OUTCOME_NAMES[outcome])] += 1
            hits += outcome == Applied.HIT
            if outcome.changed_state and message.timestamp_s is not None:
                observe_delay(max(0.0, now_s - message.timestamp_s))
            elif outcome == Applied.CONFLICT:
                self.conflicts.conflict(message, event)
        for (type_value, outcome_name), count in outcomes.items():
            self.metrics.events.labels(type_value, outcome_name).inc(count)
        if hits:
            self.metrics.online_hits.inc(hits)

    async def _dead_letter(self, dead: list[tuple[RawMessage, str, str]]) -> None:
        await send_rejections(dead, self.send_dlq, self.policy, self.metrics)
        if dead:
            self.metrics.events.labels("invalid", "rejected").inc(len(dead))


Parsed = TypeVar("Parsed")
DeadLetter = tuple[RawMessage, str, str]  # the message, the reason, the detail


def split_parsed(
    judged: Iterable[tuple[RawMessage, Parsed | Rejection]],
) -> tuple[list[tuple[RawMessage, Parsed]], list[DeadLetter]]:
    """Each message with what its parser made of it, split into the accepted and the
    rejected (with the rejection's reason and detail, for the DLQ)."""
    accepted: list[tuple[RawMessage, Parsed]] = []
    dead: list[DeadLetter] = []
    for message, parsed in judged:
        if isinstance(parsed, Rejection):
            dead.append((message, parsed.reason.value, parsed.detail))
        else:
            accepted.append((message, parsed))
    return accepted, dead


async def send_rejections(
    dead: Sequence[tuple[RawMessage, str, str]],
    send_dlq: DlqSender,
    policy: IngestPolicy,
    metrics: IngestMetrics,
) -> None:
    """Log each (message, reason, detail), send it to the DLQ and wait until the broker
    confirmed every record (the batch is acked only after), then count it by reason."""
    if not dead:
        return
    letters = []
    for message, reason, detail in dead:
        log.info(
            "rejected %s[%d]@%d: %s (%s)",
            message.topic, message.partition, message.offset, reason, detail,
        )  # fmt: skip
        letters.append(
            dead_letter(
                message.key,
                message.value,
                dlq_headers(message, reason, detail),
                policy.dlq_max_record_bytes,
            )
        )
    await send_dead_letters(letters, send_dlq, policy.retry_max_s)
    for _, reason, _ in dead:
        metrics.dlq.labels(reason).inc()
