"""Producer mistakes the worker takes but does not keep quiet about: a message key
that is not the event's `user_id`, and an event id reused for other content.

Per-user order comes from the key (every event of a user on one partition), so a
message without a key, or keyed by something else, may be applied out of order
with the user's other events. Such an event is still applied; each one is
counted (`streamrec_key_mismatch_total{kind}`) and they are logged at most once a
minute, with an example and how many since the last line. A duplicate event id
whose content differs from the event applied under it is not applied (the first
one wins); it is counted (`streamrec_events_total{outcome="conflict"}`) and
logged once per user and id.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Protocol

from streamrec.events import Event
from streamrec.metrics import IngestMetrics

log = logging.getLogger("stream.ingest")

KEY_LOG_INTERVAL_S = 60.0
# Conflicting ids remembered as logged; the oldest are forgotten beyond this.
CONFLICTS_REMEMBERED = 10_000


class Located(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...


def where(message: Located) -> str:
    return f"{message.topic}[{message.partition}]@{message.offset}"


class KeyCheck:
    """Counts and logs (rate-limited) messages whose key is not their user."""

    def __init__(self, metrics: IngestMetrics, interval_s: float = KEY_LOG_INTERVAL_S) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self._unlogged: Counter[str] = Counter()
        self._example = ""
        self._logged_at: float | None = None

    def check(self, accepted: Sequence[tuple[Located, Event]]) -> None:
        for message, event in accepted:
            key = message.key
            if key is None:
                kind = "missing"
            elif key != event.user_id.encode():
                kind = "other_user"
            else:
                continue
            self.metrics.key_mismatch.labels(kind).inc()
            if not self._unlogged:
                self._example = f"{where(message)} key={key!r} user_id={event.user_id!r}"
            self._unlogged[kind] += 1
        self._log_when_due()

    def _log_when_due(self) -> None:
        now = time.monotonic()
        if not self._unlogged or (
            self._logged_at is not None and now - self._logged_at < self.interval_s
        ):
            return
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(self._unlogged.items()))
        log.warning(
            "%d messages with a key that is not their user_id (%s; e.g. %s): per-user order "
            "needs key = user_id, and the same partitioner for every producer "
            "(docs/events.md); applied anyway",
            sum(self._unlogged.values()), kinds, self._example,
        )  # fmt: skip
        self._unlogged.clear()
        self._logged_at = now


class ConflictLog:
    """Logs each conflicting (user, event id) once."""

    def __init__(self, remembered: int = CONFLICTS_REMEMBERED) -> None:
        self.remembered = remembered
        self._logged: OrderedDict[tuple[str, str], None] = OrderedDict()

    def conflict(self, message: Located, event: Event) -> None:
        seen = (event.user_id, event.event_id)
        if seen in self._logged:
            return
        self._logged[seen] = None
        if len(self._logged) > self.remembered:
            self._logged.popitem(last=False)
        log.warning(
            "event id %r of user %r at %s was applied before with other content; this one "
            "is not applied (the first wins; later conflicts of this id are counted only)",
            event.event_id, event.user_id, where(message),
        )  # fmt: skip
