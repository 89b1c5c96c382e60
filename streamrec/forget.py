"""Forgetting a user: the request on `users.forget` (key = user_id), how it is judged,
and how one is sent (by `streamrec forget` and `DELETE /v1/admin/users/{user_id}`).

A request carries its horizon: for each input topic, the end offset of the user's
partition when it was sent. The worker applies it only once every event below the
horizon is in Redis and the archive (docs/decisions.md, "Forgetting a user"). A
bare tombstone (a null value) is a request too; the worker takes the horizon then.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from streamrec.errors import StreamrecError
from streamrec.events import Rejection, RejectReason, _check_id, decode_object
from streamrec.kafka_client import kafka_python_options
from streamrec.producer import SCHEMA_HEADERS
from streamrec.settings import Settings

# A request is a few hundred bytes; anything far larger is not one.
MAX_REQUEST_BYTES = 64 * 1024
# How long sending a request waits for Kafka: metadata, end offsets, the ack.
KAFKA_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Horizon:
    """Every event of the partition below `offset` was sent before the request."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ForgetRequest:
    user_id: str
    requested_ms: int
    # Empty: a bare tombstone; the worker reads the end offsets when it takes it.
    horizon: tuple[Horizon, ...] = ()

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "user_id": self.user_id,
                "requested_ms": self.requested_ms,
                "horizon": [
                    {"topic": h.topic, "partition": h.partition, "offset": h.offset}
                    for h in self.horizon
                ],
            }
        )


def check_user_id(user_id: str) -> str | None:
    """Why this is no user id (the events' rule: 1-128 characters), or None."""
    rejection = _check_id("user_id", user_id)
    return None if rejection is None else rejection.detail


def parse_forget(
    key: bytes | None, value: bytes | None, message_ts_ms: int | None = None
) -> ForgetRequest | Rejection:
    """Judge one message of `users.forget`. The key must be the user id, so that the
    request shares its partition with the user's events; a null value is a bare
    tombstone, dated by its message timestamp."""
    if key is None:
        return Rejection(
            RejectReason.MISSING_FIELD, "the message key is missing; it must be the user_id"
        )
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection(RejectReason.NOT_UTF8, "the message key is not valid UTF-8")
    if value is None:
        rejection = _check_id("user_id", key_text)
        if rejection is not None:
            return Rejection(rejection.reason, f"tombstone key: {rejection.detail}")
        return ForgetRequest(key_text, message_ts_ms or int(time.time() * 1000))
    body = decode_object(value, MAX_REQUEST_BYTES)
    if isinstance(body, Rejection):
        return body
    request = _request_from_fields(body)
    if not isinstance(request, Rejection) and request.user_id != key_text:
        return Rejection(
            RejectReason.BAD_VALUE,
            f"the message key {key_text[:40]!r} is not the user_id {request.user_id[:40]!r}",
        )
    return request


def _request_from_fields(body: Mapping[str, Any]) -> ForgetRequest | Rejection:
    if "user_id" not in body:
        return Rejection(RejectReason.MISSING_FIELD, "required field 'user_id' is missing")
    rejection = _check_id("user_id", body["user_id"])
    if rejection is not None:
        return rejection
    requested_ms = body.get("requested_ms", 0)
    if isinstance(requested_ms, bool) or not isinstance(requested_ms, int) or requested_ms < 0:
        return Rejection(RejectReason.WRONG_TYPE, "'requested_ms' must be integer ms >= 0")
    entries = body.get("horizon", [])
    if not isinstance(entries, list):
        return Rejection(RejectReason.WRONG_TYPE, "'horizon' must be an array")
    horizon = []
    for entry in entries:
        parsed = _horizon_entry(entry)
        if isinstance(parsed, Rejection):
            return parsed
        horizon.append(parsed)
    return ForgetRequest(body["user_id"], requested_ms, tuple(horizon))


def _horizon_entry(entry: object) -> Horizon | Rejection:
    wrong = Rejection(
        RejectReason.WRONG_TYPE,
        "each 'horizon' entry must be {topic: string, partition: int >= 0, offset: int >= 0}",
    )
    if not isinstance(entry, dict):
        return wrong
    topic, partition, offset = entry.get("topic"), entry.get("partition"), entry.get("offset")
    if not isinstance(topic, str) or not topic:
        return wrong
    for number in (partition, offset):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            return wrong
    assert isinstance(partition, int) and isinstance(offset, int)
    return Horizon(topic, partition, offset)


def user_partition(user_id: str, partitions: int) -> int:
    """The partition a producer's default partitioner (kafka-python's, aiokafka's and
    the Java client's murmur2) gives a message keyed by the user."""
    hashed: int = murmur2(user_id.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def _unreachable(settings: Settings, exc: BaseException) -> StreamrecError:
    return StreamrecError(
        f"cannot reach Kafka at {settings.kafka_bootstrap} ({type(exc).__name__}: {exc}); "
        "the forget was not recorded, try again"
    )


def _probe(settings: Settings) -> None:
    """Fail in a moment, and cleanly, when no bootstrap server takes a connection:
    kafka-python's clients wait out their bootstrap timeout first and leave sockets
    open when it passes."""
    error: OSError | None = None
    for address in settings.kafka_bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), KAFKA_TIMEOUT_S / 2):
                return
        except (OSError, ValueError) as exc:
            error = exc if isinstance(exc, OSError) else OSError(str(exc))
    raise _unreachable(settings, error or OSError("no bootstrap server"))


class PartitionOffsets:
    """A consumer without a group, held open, for partition counts and end offsets
    (blocking; one caller at a time). A Kafka error closes it, and raises
    `StreamrecError`; the next call opens a new one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: KafkaConsumer | None = None

    def horizon(self, user_id: str, must_exist: tuple[str, ...] = ()) -> tuple[Horizon, ...]:
        """The horizon of a request sent now: the end offset of the user's partition
        of each input topic. `must_exist`: topics whose absence is an error too."""
        consumer = self._open()
        try:
            for topic in must_exist:
                if not consumer.partitions_for_topic(topic):
                    raise StreamrecError(
                        f"topic {topic!r} does not exist; create it with `streamrec topics` "
                        "(a worker creates it when it starts)"
                    )
            wanted = []
            for topic in self.settings.input_topics:
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    raise StreamrecError(
                        f"topic {topic!r} does not exist; create it with `streamrec topics`"
                    )
                wanted.append(TopicPartition(topic, user_partition(user_id, len(partitions))))
            ends = consumer.end_offsets(wanted)
        except KafkaError as exc:
            self.close()
            raise _unreachable(self.settings, exc) from exc
        return tuple(Horizon(tp.topic, tp.partition, int(ends[tp])) for tp in wanted)

    def problem(self, horizon: tuple[Horizon, ...]) -> str | None:
        """Why a request's horizon cannot be waited for, or None: a topic that is no
        input topic, a partition it does not have, an offset past the partition's
        end. Such a request would wait forever."""
        inputs = self.settings.input_topics
        for h in horizon:
            if h.topic not in inputs:
                return f"the horizon names topic {h.topic!r}, not one of {list(inputs)}"
        if not horizon:
            return None
        consumer = self._open()
        try:
            for h in horizon:
                if h.partition not in (consumer.partitions_for_topic(h.topic) or set()):
                    return f"the horizon names {h.topic}[{h.partition}], which does not exist"
            ends = consumer.end_offsets([TopicPartition(h.topic, h.partition) for h in horizon])
        except KafkaError as exc:
            self.close()
            raise _unreachable(self.settings, exc) from exc
        for h in horizon:
            end = int(ends[TopicPartition(h.topic, h.partition)])
            if h.offset > end:
                where = f"{h.topic}[{h.partition}]"
                return f"the horizon's {where} offset {h.offset} is past its end {end}"
        return None

    def _open(self) -> KafkaConsumer:
        if self._consumer is None:
            _probe(self.settings)
            try:
                self._consumer = KafkaConsumer(
                    **kafka_python_options(self.settings),
                    client_id="streamrec-forget",
                    # Asking for a topic's partitions must not create it.
                    allow_auto_create_topics=False,
                    request_timeout_ms=int(KAFKA_TIMEOUT_S * 1000) + 1000,
                    bootstrap_timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
                )
            except KafkaError as exc:
                raise _unreachable(self.settings, exc) from exc
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def group_committed(settings: Settings) -> dict[tuple[str, int], int]:
    """Every offset the workers' consumer group (`app_id`) committed, from the broker
    (blocking): (topic, partition) -> the offset after the last message written."""
    _probe(settings)
    try:
        admin = KafkaAdminClient(
            **kafka_python_options(settings),
            client_id="streamrec-forget",
            bootstrap_timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
        )
    except KafkaError as exc:
        raise _unreachable(settings, exc) from exc
    try:
        offsets = admin.list_group_offsets({settings.app_id: None}).get(settings.app_id, {})
    except KafkaError as exc:
        raise _unreachable(settings, exc) from exc
    finally:
        admin.close()
    return {(tp.topic, tp.partition): int(m.offset) for tp, m in offsets.items() if m.offset >= 0}


def send_forget(settings: Settings, user_id: str) -> ForgetRequest:
    """Send a request to forget the user and wait for the broker's acknowledgement.
    Blocking (kafka-python); raises `StreamrecError` with one line when the id is
    no user id or Kafka does not take the request."""
    problem = check_user_id(user_id)
    if problem is not None:
        raise StreamrecError(problem)
    offsets = PartitionOffsets(settings)
    try:
        horizon = offsets.horizon(user_id, must_exist=(settings.topic_users_forget,))
    finally:
        offsets.close()
    request = ForgetRequest(user_id, int(time.time() * 1000), horizon)
    try:
        producer = KafkaProducer(
            **kafka_python_options(settings),
            max_block_ms=int(KAFKA_TIMEOUT_S * 1000),
            client_id="streamrec-forget",
            acks="all",
            bootstrap_timeout_ms=int(KAFKA_TIMEOUT_S * 1000),
        )
    except KafkaError as exc:
        raise _unreachable(settings, exc) from exc
    try:
        sent = producer.send(
            settings.topic_users_forget,
            key=user_id.encode(),
            value=request.to_json(),
            headers=SCHEMA_HEADERS,
        )
        sent.get(timeout=KAFKA_TIMEOUT_S)
    except KafkaError as exc:
        raise _unreachable(settings, exc) from exc
    finally:
        producer.close(timeout=KAFKA_TIMEOUT_S)
    return request
