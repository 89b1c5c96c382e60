"""Consumer lag per assigned partition: log end offset minus committed offset. A
partition no longer assigned (revoked in a rebalance) loses its gauge at the next
poll, so a worker never reports lag for partitions another worker now reads."""

from __future__ import annotations

import faust
from faust.types import TP

from streamrec.metrics import IngestMetrics


class ConsumerLag:
    def __init__(self, app: faust.App, metrics: IngestMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._published: set[TP] = set()

    async def publish(self) -> bool:
        """Ask the broker for the assigned partitions' end offsets and set their
        gauges, removing those of partitions no longer assigned; True when the
        broker answered (False: nothing is assigned, nothing was asked)."""
        consumer = self.app.consumer
        assigned = list(consumer.assignment())
        self._forget(self._published - set(assigned))
        if not assigned:
            return False
        highwaters = await consumer.highwaters(*assigned)
        # Faust keeps the last committed offset per partition; it has no public getter.
        committed: dict[TP, int | None] = getattr(consumer, "_committed_offset", {})
        # The assignment may have moved while the broker answered.
        still = set(consumer.assignment())
        self._forget(self._published - still)
        for tp in assigned:
            end = highwaters.get(tp)
            if end is None or tp not in still:
                continue
            done = committed.get(tp)
            lag = end - (done or 0)
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, lag))
            self._published.add(tp)
        return True

    def _forget(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            self._published.discard(tp)
