"""Folding one batch of the items topic into the catalogue in Redis, with nothing lost.

Each message is judged by the catalogue contract (`streamrec/items.py`); rejections
go to the DLQ as bad events do; records and deletes are applied by the catalogue
script (`streamrec/catalogue.py`), which keeps event-time order. While Redis takes
no writes the batch waits, as the event path does (`stream/redis_waits.py`). The
caller acks the batch only after this returns: a crash means redelivery, and a
redelivered record is a duplicate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from faust.types import EventT

from stream.dead_letter import DlqSender
from stream.ingest import (
    STATE_WRITE_FAILED,
    IngestPolicy,
    RawMessage,
    send_rejections,
    split_parsed,
)
from stream.overlap import raw_message
from stream.redis_waits import RedisWaits
from streamrec.catalogue import Catalogue, ItemApplied
from streamrec.items import ItemChange, parse_item_message
from streamrec.metrics import IngestMetrics

log = logging.getLogger(__name__)

# Label `outcome` of `streamrec_item_records_total` for each result of the script.
OUTCOME_NAMES = {
    ItemApplied.APPLIED: "applied",
    ItemApplied.DELETED: "deleted",
    ItemApplied.DUPLICATE: "duplicate",
    ItemApplied.STALE: "stale",
}


@dataclass(frozen=True, slots=True)
class ItemMessage:
    """One message of the items topic; a tombstone's value is null, not empty bytes."""

    message: RawMessage
    tombstone: bool = False

    @property
    def value(self) -> bytes | None:
        return None if self.tombstone else self.message.value

    @property
    def timestamp_ms(self) -> int | None:
        seconds = self.message.timestamp_s
        return None if seconds is None else round(seconds * 1000)


def item_message(event: EventT[bytes]) -> ItemMessage:
    return ItemMessage(raw_message(event), tombstone=event.message.value is None)


class CatalogueIngestor:
    def __init__(
        self,
        catalogue: Catalogue,
        metrics: IngestMetrics,
        send_dlq: DlqSender,
        policy: IngestPolicy,
        waits: RedisWaits,
    ) -> None:
        self.catalogue = catalogue
        self.metrics = metrics
        self.send_dlq = send_dlq
        self.policy = policy
        self.waits = waits

    async def handle_batch(self, messages: Sequence[ItemMessage]) -> None:
        now_ms = int(time.time() * 1000)
        policy = self.policy
        accepted: list[tuple[RawMessage, ItemChange]]
        accepted, dead = split_parsed(
            (
                item.message,
                parse_item_message(
                    item.message.key,
                    item.value,
                    policy.max_message_bytes,
                    message_ts_ms=item.timestamp_ms,
                    now_ms=now_ms,
                    max_future_ms=policy.max_future_ms,
                ),
            )
            for item in messages
        )

        dead += await self._apply(accepted)
        await send_rejections(dead, self.send_dlq, policy, self.metrics)
        if dead:
            self.metrics.item_records.labels("rejected").inc(len(dead))

    async def _apply(
        self, accepted: list[tuple[RawMessage, ItemChange]]
    ) -> list[tuple[RawMessage, str, str]]:
        """Apply every change; return those Redis refused for what they held (a script
        error, not an outage), found one by one so the rest still lands."""
        if not accepted:
            return []
        apply = self.catalogue.apply_records_each
        outcomes = await self.waits.apply_until_available(apply, [c for _, c in accepted])
        paired = list(zip(accepted, outcomes, strict=True))
        self._observe([(m, o) for (m, _), o in paired if isinstance(o, ItemApplied)])
        refused = [pair for pair, o in paired if not isinstance(o, ItemApplied)]
        failed = []
        if refused:
            log.error("%d item records refused by Redis; applying them one at a time", len(refused))
        for message, change in refused:
            (outcome,) = await self.waits.apply_until_available(apply, [change])
            if isinstance(outcome, ItemApplied):
                self._observe([(message, outcome)])
                continue
            log.error(
                "item %s at %s[%d]@%d refused by Redis: %s",
                change.item_id, message.topic, message.partition, message.offset, outcome,
            )  # fmt: skip
            failed.append((message, STATE_WRITE_FAILED, f"Redis refused the write: {outcome}"))
        return failed

    def _observe(self, applied: list[tuple[RawMessage, ItemApplied]]) -> None:
        now_s = time.time()
        outcomes: Counter[str] = Counter()
        for message, outcome in applied:
            outcomes[OUTCOME_NAMES[outcome]] += 1
            changed = outcome in (ItemApplied.APPLIED, ItemApplied.DELETED)
            if changed and message.timestamp_s is not None:
                self.metrics.item_to_state.observe(max(0.0, now_s - message.timestamp_s))
        for name, count in outcomes.items():
            self.metrics.item_records.labels(name).inc(count)
