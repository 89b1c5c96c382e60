"""Consumer lag per assigned partition: log end offset minus committed offset."""

from __future__ import annotations

import faust
from faust.types import TP

from streamrec.metrics import IngestMetrics


async def publish_consumer_lag(app: faust.App, metrics: IngestMetrics) -> bool:
    """Ask the broker for the assigned partitions' end offsets; True when it answered
    (False: nothing is assigned, nothing was asked)."""
    consumer = app.consumer
    assigned = list(consumer.assignment())
    if not assigned:
        return False
    highwaters = await consumer.highwaters(*assigned)
    # Faust keeps the last committed offset per partition; it has no public getter.
    committed: dict[TP, int | None] = getattr(consumer, "_committed_offset", {})
    for tp in assigned:
        end = highwaters.get(tp)
        if end is None:
            continue
        done = committed.get(tp)
        lag = end - (done or 0)
        metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, lag))
    return True
