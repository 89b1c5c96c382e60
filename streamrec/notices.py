"""Messages streamrec sends for its own parts: the worker's state-change notices.

After a batch is in Redis, the worker sends, per input partition the batch
touched, one notice listing the users whose state changed and the newest event
time of each, to the same partition number of `state.changes`. Producers key
events by user, so a user's notices always land in one partition, in order;
whatever refreshes recommendations (the model server's feed) reads them
there. One notice per batch and partition, not per user: the worker's Kafka
cost stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class StateChanges:
    partition: int
    last_ts_ms: dict[str, int]  # user_id → newest event time applied in the batch
    applied_at_ms: int  # when the state was written
    # Users forgotten (every key gone): the feed drops what it holds for them and
    # sends their tombstone, after any record it sent from an earlier notice.
    forgotten: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        body: dict[str, object] = {
            "partition": self.partition,
            "users": self.last_ts_ms,
            "applied_at": self.applied_at_ms,
        }
        if self.forgotten:
            body["forgotten"] = list(self.forgotten)
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes) -> StateChanges:
        body = orjson.loads(raw)
        return cls(
            body["partition"], body["users"], body["applied_at"], tuple(body.get("forgotten", ()))
        )
