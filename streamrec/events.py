"""The event contract with producers: what a message may hold, and how it is judged.

`parse_event` turns the raw bytes of one Kafka message into an `Event` or a
`Rejection` with a reason; it never raises on bad input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

MAX_ID_CHARS = 128
MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_VALUE_CHARS = 1024
# Event time must fall between 1970 and 2100; anything else is a unit mistake
# (microseconds sent as milliseconds) or garbage.
MIN_TS_MS = 0
MAX_TS_MS = 4_102_444_800_000
# Seconds sent as milliseconds are told apart the same way, by range: an integer
# between these two is a time from 2000 to 2100 in seconds (as milliseconds it
# would be a moment between 11 January and 17 February 1970), and is converted.
SECONDS_FROM = 946_684_800  # 2000-01-01T00:00:00Z in seconds
SECONDS_UNTIL = MAX_TS_MS // 1000
# How far after the receiver's clock an event may be dated (`max_future_skew_s`):
# Kafka 4's default for message timestamps in the future
# (`log.message.timestamp.after.max.ms`), one hour.
MAX_FUTURE_SKEW_MS = 3_600_000
# The version of the wire formats (streamrec/schemas/*.schema.json): every record
# streamrec writes carries it in a `schema-version` header. Bump on a change a
# reader must know about; adding an optional field is not one.
SCHEMA_VERSION = "1"


class EventType(StrEnum):
    CLICK = "click"
    PURCHASE = "purchase"
    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    FAVORITE = "favorite"


# `EventType(value)` in a dict: the Enum call costs ~0.5 µs, and the model server
# converts a few dozen per request.
EVENT_TYPE_OF: dict[str, EventType] = {t.value: t for t in EventType}


class RejectReason(StrEnum):
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_FIELD = "empty_field"
    TOO_LONG = "too_long"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    UNKNOWN_TYPE = "unknown_type"
    BAD_VALUE = "bad_value"


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    type: EventType
    ts_ms: int
    session_id: str | None = None
    context: Mapping[str, str | int | float] | None = None
    price: float | None = None
    quantity: float | None = None

    def to_json(self) -> bytes:
        """The canonical wire form, as a producer would send it."""
        body: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.type.value,
            "ts": self.ts_ms,
        }
        for name in ("session_id", "context", "price", "quantity"):
            value = getattr(self, name)
            if value is not None:
                body[name] = dict(value) if name == "context" else value
        return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str


_REQUIRED_IDS = ("event_id", "user_id", "item_id")


def parse_event(
    raw: bytes,
    max_bytes: int = 64 * 1024,
    *,
    now_ms: int | None = None,
    max_future_ms: int = MAX_FUTURE_SKEW_MS,
) -> Event | Rejection:
    """Judge one message. Unknown extra fields are ignored (forward compatible). With
    `now_ms` (the receiver's clock), an event dated more than `max_future_ms` after
    it is rejected: one event from 2099 would otherwise move the decayed counters'
    time origin for everyone (docs/state.md)."""
    body = decode_object(raw, max_bytes)
    if isinstance(body, Rejection):
        return body
    for name in (*_REQUIRED_IDS, "type", "ts"):
        if name not in body:
            return Rejection(RejectReason.MISSING_FIELD, f"required field '{name}' is missing")
    ids: list[str] = []
    for name in _REQUIRED_IDS:
        rejection = _check_id(name, body[name])
        if rejection is not None:
            return rejection
        ids.append(body[name])

    type_value = body["type"]
    if not isinstance(type_value, str):
        return Rejection(
            RejectReason.WRONG_TYPE, f"'type' must be a string, got {_kind(type_value)}"
        )
    try:
        event_type = EventType(type_value)
    except ValueError:
        known = ", ".join(t.value for t in EventType)
        return Rejection(
            RejectReason.UNKNOWN_TYPE, f"'type' is {type_value[:40]!r}; expected {known}"
        )

    ts_ms = event_time(body["ts"], now_ms, max_future_ms)
    if isinstance(ts_ms, Rejection):
        return ts_ms

    session_id = body.get("session_id")
    if session_id is not None:
        rejection = _check_id("session_id", session_id)
        if rejection is not None:
            return rejection

    context = body.get("context")
    if context is not None:
        rejection = _check_context(context)
        if rejection is not None:
            return rejection

    amounts: dict[str, float | None] = {}
    for name in ("price", "quantity"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return Rejection(
                    RejectReason.WRONG_TYPE, f"'{name}' must be a number, got {_kind(value)}"
                )
            if not math.isfinite(value) or value < 0:
                return Rejection(
                    RejectReason.BAD_VALUE, f"'{name}' must be a number >= 0, got {value}"
                )
            value = float(value)
        amounts[name] = value

    return Event(
        event_id=ids[0],
        user_id=ids[1],
        item_id=ids[2],
        type=event_type,
        ts_ms=ts_ms,
        session_id=session_id,
        context=context,
        price=amounts["price"],
        quantity=amounts["quantity"],
    )


def decode_object(raw: bytes, max_bytes: int) -> dict[str, Any] | Rejection:
    """One message's bytes as a JSON object, or why not (the catalogue's records are
    decoded by the same rules, streamrec/items.py)."""
    if len(raw) > max_bytes:
        return Rejection(RejectReason.TOO_LARGE, f"message is {len(raw)} bytes, limit {max_bytes}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return Rejection(RejectReason.NOT_UTF8, "message is not valid UTF-8")
        return Rejection(RejectReason.MALFORMED_JSON, f"not valid JSON: {exc}")
    if not isinstance(body, dict):
        return Rejection(RejectReason.NOT_OBJECT, f"expected a JSON object, got {_kind(body)}")
    return body


def future_rejection(ts_ms: int, now_ms: int | None, max_future_ms: int) -> Rejection | None:
    """With `now_ms` (the receiver's clock), a time more than `max_future_ms` after it
    is rejected as `future_timestamp`."""
    if now_ms is None or ts_ms <= now_ms + max_future_ms:
        return None
    return Rejection(
        RejectReason.FUTURE_TIMESTAMP,
        f"'ts' {ts_ms} ms is {(ts_ms - now_ms) / 1000:.0f} s after the receiver's clock; "
        f"at most {max_future_ms / 1000:.0f} s is accepted",
    )


def event_time(value: object, now_ms: int | None, max_future_ms: int) -> int | Rejection:
    """A record's `ts` (`parse_timestamp`), refused when too far ahead of `now_ms`."""
    ts_ms = parse_timestamp(value)
    if isinstance(ts_ms, Rejection):
        return ts_ms
    return future_rejection(ts_ms, now_ms, max_future_ms) or ts_ms


def parse_timestamp(value: object) -> int | Rejection:
    """Integer milliseconds since the epoch (integer seconds from 2000 on are taken
    as such, see `SECONDS_FROM`), or an RFC 3339 string with a zone."""
    if isinstance(value, bool):
        return Rejection(
            RejectReason.WRONG_TYPE, "'ts' must be integer ms or an RFC 3339 string, got bool"
        )
    if isinstance(value, int):
        ts_ms = value * 1000 if SECONDS_FROM <= value < SECONDS_UNTIL else value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return Rejection(RejectReason.BAD_TIMESTAMP, f"'ts' {value[:40]!r} is not RFC 3339")
        if moment.tzinfo is None:
            return Rejection(RejectReason.BAD_TIMESTAMP, f"'ts' {value[:40]!r} has no time zone")
        try:
            ts_ms = round(moment.timestamp() * 1000)
        except (OverflowError, ValueError):
            return Rejection(RejectReason.BAD_TIMESTAMP, f"'ts' {value[:40]!r} is out of range")
    else:
        return Rejection(
            RejectReason.WRONG_TYPE,
            f"'ts' must be integer ms or an RFC 3339 string, got {_kind(value)}",
        )
    if not MIN_TS_MS <= ts_ms <= MAX_TS_MS:
        return Rejection(RejectReason.BAD_TIMESTAMP, f"'ts' {ts_ms} ms is outside 1970..2100")
    return ts_ms


def _check_id(name: str, value: object) -> Rejection | None:
    if not isinstance(value, str):
        return Rejection(RejectReason.WRONG_TYPE, f"'{name}' must be a string, got {_kind(value)}")
    if not value:
        return Rejection(RejectReason.EMPTY_FIELD, f"'{name}' must not be empty")
    if len(value) > MAX_ID_CHARS:
        return Rejection(
            RejectReason.TOO_LONG, f"'{name}' is {len(value)} chars, limit {MAX_ID_CHARS}"
        )
    return None


def _check_context(context: object) -> Rejection | None:
    if not isinstance(context, dict):
        return Rejection(
            RejectReason.WRONG_TYPE, f"'context' must be an object, got {_kind(context)}"
        )
    if len(context) > MAX_CONTEXT_KEYS:
        return Rejection(
            RejectReason.TOO_LONG, f"'context' has {len(context)} keys, limit {MAX_CONTEXT_KEYS}"
        )
    for key, value in context.items():
        if len(key) > MAX_ID_CHARS:
            return Rejection(
                RejectReason.TOO_LONG, f"context key is {len(key)} chars, limit {MAX_ID_CHARS}"
            )
        if isinstance(value, str):
            if len(value) > MAX_CONTEXT_VALUE_CHARS:
                return Rejection(RejectReason.TOO_LONG, f"context['{key[:40]}'] is too long")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return Rejection(
                RejectReason.WRONG_TYPE,
                f"context['{key[:40]}'] must be a string or number, got {_kind(value)}",
            )
    return None


def _kind(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "bool", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )
