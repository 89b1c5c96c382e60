"""What the worker's /readyz says: it holds input partitions, no rebalance is under
way, the broker answered lately, and Redis takes its writes.

The broker is asked by the consumer-lag poll (the end offsets of the assigned
partitions, every `lag_poll_s`); a worker whose broker has not answered for
`worker_broker_timeout_s` is not ready, even though its consumer still lists
the partitions it was given before the broker went away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class BrokerContact:
    """When the broker last answered this worker (monotonic seconds)."""

    timeout_s: float
    # Start-up counts as contact: no partitions are assigned without a broker.
    last_answer_s: float = 0.0

    def __post_init__(self) -> None:
        self.last_answer_s = time.monotonic()

    def answered(self) -> None:
        self.last_answer_s = time.monotonic()

    @property
    def silent_s(self) -> float:
        return time.monotonic() - self.last_answer_s

    @property
    def reachable(self) -> bool:
        return self.silent_s <= self.timeout_s


def readiness(
    partitions: int, rebalancing: bool, broker: BrokerContact, state_unavailable: str | None
) -> dict[str, object]:
    """The /readyz body; `ready` is what its status says (200 or 503)."""
    ready = partitions > 0 and not rebalancing and broker.reachable and state_unavailable is None
    return {
        "ready": ready,
        "partitions": partitions,
        "rebalancing": rebalancing,
        "broker": broker.reachable,
        "broker_silent_s": round(broker.silent_s, 1),
        "redis": state_unavailable or "ok",
    }
