"""`POST /v1/events`: events over HTTP for producers without a Kafka client.

A batch (a JSON array of events, or `{"events": [...]}`) is judged event by event
by the event contract's own parser (`streamrec.events.parse_event`, what the stream
worker runs), and every valid event is written to its topic (keyed by `user_id`,
as `streamrec produce` does, with the `schema-version` header) with acks from all
in-sync replicas before the answer. The answer lists each event's outcome:

- `accepted`: written; the worker applies it (a redelivery of an `event_id` it has
  seen is a duplicate there, so a retried batch is safe);
- `rejected`: not written; `reason` and `detail` as the worker's DLQ would say;
- `not_written`: valid, but Kafka did not take it in time: send it again.

202 when every valid event was written (rejections included: the caller reads
them per event), 503 with `Retry-After` when any valid event was not, 4xx for a
body that is no batch at all. The Kafka producer starts with the first batch, so
a server whose Kafka is away still serves recommendations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streamrec.events import Event, Rejection, parse_event
from streamrec.kafka_client import kafka_python_options
from streamrec.producer import SCHEMA_HEADERS, topic_for
from streamrec.settings import Settings

log = logging.getLogger(__name__)

# The longest a batch waits for Kafka: starting the producer, then its acks.
KAFKA_TIMEOUT_S = 5.0


class BatchError(ValueError):
    """The body is not a batch of events (400/422 to the caller)."""


def batch_items(raw: bytes, max_events: int) -> list[Any]:
    """The batch's elements, unjudged: a JSON array, or an object with `events`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BatchError("malformed_json", "the body must be a JSON array of events") from None
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        body = body["events"]
    if not isinstance(body, list):
        raise BatchError(
            "invalid_request", 'the body must be a JSON array of events or {"events": [...]}'
        )
    if not body:
        raise BatchError("invalid_request", "the batch holds no event")
    if len(body) > max_events:
        raise BatchError(
            "invalid_request", f"a batch holds at most {max_events} events, got {len(body)}"
        )
    return body


class EventIntake:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **kafka_python_options(self.settings),
                    client_id="streamrec-http-events",
                    acks="all",
                    linger_ms=2,
                    request_timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
                )
                try:
                    await asyncio.wait_for(producer.start(), KAFKA_TIMEOUT_S)
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def take(self, items: list[Any]) -> tuple[bool, list[dict[str, Any]]]:
        """Judge and write a batch: (every valid event written?, outcome per event)."""
        now_ms = int(time.time() * 1000)
        judged: list[Event | Rejection] = [
            parse_event(orjson.dumps(item), now_ms=now_ms) for item in items
        ]
        outcomes: list[dict[str, Any]] = []
        valid = [(n, e) for n, e in enumerate(judged) if isinstance(e, Event)]
        written: dict[int, str | None] = {}
        if valid:
            written = await self._write(valid)
        for n, event in enumerate(judged):
            if isinstance(event, Rejection):
                outcomes.append(
                    {
                        "index": n,
                        "outcome": "rejected",
                        "reason": event.reason.value,
                        "detail": event.detail,
                    }
                )
            elif written.get(n) is None:
                outcomes.append({"index": n, "event_id": event.event_id, "outcome": "accepted"})
            else:
                outcomes.append(
                    {
                        "index": n,
                        "event_id": event.event_id,
                        "outcome": "not_written",
                        "detail": written[n],
                    }
                )
        return all(why is None for why in written.values()), outcomes

    async def _write(self, valid: list[tuple[int, Event]]) -> dict[int, str | None]:
        """Per index: None when Kafka acknowledged it, else why not."""
        try:
            producer = await self._started()
        except (KafkaError, OSError, TimeoutError) as exc:
            why = f"Kafka at {self.settings.kafka_bootstrap} is unreachable: {type(exc).__name__}"
            log.warning("POST /v1/events: %s (%s)", why, exc)
            return {n: why for n, _ in valid}
        results: list[object]
        try:
            sends = [
                await producer.send(
                    topic_for(event.type, self.settings),
                    event.to_json(),
                    key=event.user_id.encode(),
                    headers=SCHEMA_HEADERS,
                )
                for _, event in valid
            ]
            results = await asyncio.wait_for(
                asyncio.gather(*sends, return_exceptions=True), KAFKA_TIMEOUT_S
            )
        except (KafkaError, TimeoutError) as exc:
            results = [exc] * len(valid)
        outcome: dict[int, str | None] = {}
        for (n, _), result in zip(valid, results, strict=True):
            outcome[n] = (
                f"Kafka did not acknowledge it: {type(result).__name__}"
                if isinstance(result, BaseException)
                else None
            )
        return outcome

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
