"""Producing events to Kafka with kafka-python: keyed by user, routed by type."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kafka import KafkaProducer
from kafka.errors import KafkaError

from streamrec.errors import StreamrecError
from streamrec.events import SCHEMA_VERSION, Event, EventType, Rejection
from streamrec.kafka_client import kafka_python_options
from streamrec.settings import Settings

# Every record streamrec writes names the version of its wire format (the JSON
# Schemas in streamrec/schemas/, docs/events.md).
SCHEMA_HEADERS = [("schema-version", SCHEMA_VERSION.encode())]


def topic_for(event_type: EventType, settings: Settings) -> str:
    """Purchases have their own topic; every other type travels with clicks."""
    return settings.topic_purchases if event_type is EventType.PURCHASE else settings.topic_clicks


@dataclass
class ReplayReport:
    sent: int = 0
    skipped: list[tuple[int, Rejection]] = field(default_factory=list)
    seconds: float = 0.0


class EventProducer:
    """An open producer; `close()` flushes and waits for every acknowledgement."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            self._producer = KafkaProducer(
                **kafka_python_options(settings),
                client_id="streamrec-producer",
                acks="all",
                linger_ms=5,
                batch_size=256 * 1024,
                retries=5,
            )
        except KafkaError as exc:
            raise StreamrecError(
                f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}"
            ) from exc

    def send(self, event: Event) -> None:
        self.send_raw(topic_for(event.type, self.settings), event.user_id.encode(), event.to_json())

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._producer.send(topic, key=key, value=value, headers=SCHEMA_HEADERS)

    def flush(self) -> None:
        self._producer.flush()

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replay(
    producer: EventProducer,
    rows: Iterable[tuple[int, Event | Rejection]],
    rate_per_s: float | None = None,
    on_progress: object = None,
) -> ReplayReport:
    """Send every valid row, paced to `rate_per_s` if given; bad rows are reported."""
    report = ReplayReport()
    started = time.perf_counter()
    for line_number, row in rows:
        if isinstance(row, Rejection):
            report.skipped.append((line_number, row))
            continue
        if rate_per_s:
            due = started + report.sent / rate_per_s
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        producer.send(row)
        report.sent += 1
        if callable(on_progress):
            on_progress(1)
    producer.flush()
    report.seconds = time.perf_counter() - started
    return report
