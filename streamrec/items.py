"""The catalogue contract: what an item record on the `items` topic may hold, and how
it is judged.

`parse_item_message` turns one Kafka message (key, value, timestamp) into an
`ItemRecord`, an `ItemDelete` or a `Rejection` with one of the event contract's
reasons (streamrec/events.py); it never raises on bad input. Ids and timestamps
follow the event rules; docs/catalogue.md explains the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streamrec.events import (
    MAX_CONTEXT_KEYS,
    MAX_CONTEXT_VALUE_CHARS,
    MAX_FUTURE_SKEW_MS,
    MAX_ID_CHARS,
    Rejection,
    RejectReason,
    _check_id,
    _kind,
    decode_object,
    event_time,
    future_rejection,
)

MAX_TITLE_CHARS = 1024
MAX_CATEGORIES = 16
MAX_TAGS = 32
# Attributes are bounded like an event's `context`.
MAX_ATTRIBUTES = MAX_CONTEXT_KEYS
MAX_ATTRIBUTE_VALUE_CHARS = MAX_CONTEXT_VALUE_CHARS

AttributeValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """An item's whole state at `ts_ms`: a record replaces the one before it (the
    topic is compacted, so the newest record per item is all a new reader sees)."""

    item_id: str
    ts_ms: int
    available: bool = True
    categories: tuple[str, ...] = ()
    title: str | None = None
    price: float | None = None
    tags: tuple[str, ...] = ()
    attributes: Mapping[str, AttributeValue] | None = None

    def to_json(self) -> bytes:
        """The canonical wire form, as a producer would send it."""
        body: dict[str, Any] = {
            "item_id": self.item_id,
            "ts": self.ts_ms,
            "available": self.available,
        }
        if self.categories:
            body["category"] = list(self.categories)
        if self.title is not None:
            body["title"] = self.title
        if self.price is not None:
            body["price"] = self.price
        if self.tags:
            body["tags"] = list(self.tags)
        if self.attributes:
            body["attributes"] = dict(self.attributes)
        return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class ItemDelete:
    """The item is gone from `ts_ms` on: a tombstone (dated by its message timestamp)
    or a record with `"deleted": true`."""

    item_id: str
    ts_ms: int

    def to_json(self) -> bytes:
        return orjson.dumps({"item_id": self.item_id, "ts": self.ts_ms, "deleted": True})


ItemChange = ItemRecord | ItemDelete


def parse_item_message(
    key: bytes | None,
    value: bytes | None,
    max_bytes: int = 64 * 1024,
    *,
    message_ts_ms: int | None = None,
    now_ms: int | None = None,
    max_future_ms: int = MAX_FUTURE_SKEW_MS,
) -> ItemChange | Rejection:
    """Judge one message of the items topic. The key must be the item id: compaction
    keeps the newest record per key, so a record under another key would outlive or
    vanish with another item's. A null value (a tombstone) deletes the key's item at
    the message's timestamp."""
    if key is None:
        return Rejection(
            RejectReason.MISSING_FIELD, "the message key is missing; it must be the item_id"
        )
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection(RejectReason.NOT_UTF8, "the message key is not valid UTF-8")
    if value is None:
        rejection = _check_id("item_id", key_text)
        if rejection is not None:
            return Rejection(rejection.reason, f"tombstone key: {rejection.detail}")
        if message_ts_ms is None or message_ts_ms < 0:
            return Rejection(
                RejectReason.MISSING_FIELD,
                "a tombstone is dated by its message timestamp, and this one has none",
            )
        future = future_rejection(message_ts_ms, now_ms, max_future_ms)
        return future or ItemDelete(key_text, message_ts_ms)
    parsed = parse_item(value, max_bytes, now_ms=now_ms, max_future_ms=max_future_ms)
    if not isinstance(parsed, Rejection) and parsed.item_id != key_text:
        return Rejection(
            RejectReason.BAD_VALUE,
            f"the message key {key_text[:40]!r} is not the item_id {parsed.item_id[:40]!r}",
        )
    return parsed


def parse_item(
    raw: bytes,
    max_bytes: int = 64 * 1024,
    *,
    now_ms: int | None = None,
    max_future_ms: int = MAX_FUTURE_SKEW_MS,
) -> ItemChange | Rejection:
    """Judge one record's bytes (a message value, or a line of a file to load).
    Unknown extra fields are ignored, as in events."""
    body = decode_object(raw, max_bytes)
    if isinstance(body, Rejection):
        return body
    return item_from_fields(body, now_ms=now_ms, max_future_ms=max_future_ms)


def item_from_fields(
    body: Mapping[str, Any], *, now_ms: int | None = None, max_future_ms: int = MAX_FUTURE_SKEW_MS
) -> ItemChange | Rejection:
    """Judge a record already decoded into fields."""
    for name in ("item_id", "ts"):
        if name not in body:
            return Rejection(RejectReason.MISSING_FIELD, f"required field '{name}' is missing")
    item_id = body["item_id"]
    rejection = _check_id("item_id", item_id)
    if rejection is not None:
        return rejection
    ts_ms = event_time(body["ts"], now_ms, max_future_ms)
    if isinstance(ts_ms, Rejection):
        return ts_ms

    deleted = _flag(body, "deleted", default=False)
    if isinstance(deleted, Rejection):
        return deleted
    if deleted:
        return ItemDelete(item_id, ts_ms)
    available = _flag(body, "available", default=True)
    if isinstance(available, Rejection):
        return available

    categories = _strings(body.get("category"), "category", MAX_CATEGORIES, single=True)
    if isinstance(categories, Rejection):
        return categories
    tags = _strings(body.get("tags"), "tags", MAX_TAGS, single=False)
    if isinstance(tags, Rejection):
        return tags

    title = body.get("title")
    if title is not None:
        if not isinstance(title, str):
            return Rejection(
                RejectReason.WRONG_TYPE, f"'title' must be a string, got {_kind(title)}"
            )
        if not title:
            return Rejection(RejectReason.EMPTY_FIELD, "'title' must not be empty")
        if len(title) > MAX_TITLE_CHARS:
            return Rejection(
                RejectReason.TOO_LONG, f"'title' is {len(title)} chars, limit {MAX_TITLE_CHARS}"
            )

    price = body.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float):
            return Rejection(
                RejectReason.WRONG_TYPE, f"'price' must be a number, got {_kind(price)}"
            )
        if not math.isfinite(price) or price < 0:
            return Rejection(RejectReason.BAD_VALUE, f"'price' must be a number >= 0, got {price}")
        price = float(price)

    attributes = body.get("attributes")
    if attributes is not None:
        rejection = _check_attributes(attributes)
        if rejection is not None:
            return rejection

    return ItemRecord(
        item_id=item_id,
        ts_ms=ts_ms,
        available=available,
        categories=categories,
        title=title,
        price=price,
        tags=tags,
        attributes=attributes or None,
    )


def _flag(body: Mapping[str, Any], name: str, *, default: bool) -> bool | Rejection:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        return Rejection(
            RejectReason.WRONG_TYPE, f"'{name}' must be true or false, got {_kind(value)}"
        )
    return value


def _strings(value: object, name: str, limit: int, *, single: bool) -> tuple[str, ...] | Rejection:
    """A list of strings with the id rules (1-128 chars), repeats dropped, order kept;
    with `single`, one string alone counts as a list of one."""
    if value is None:
        return ()
    if single and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        expected = "a string or a list of strings" if single else "a list of strings"
        return Rejection(
            RejectReason.WRONG_TYPE, f"'{name}' must be {expected}, got {_kind(value)}"
        )
    if len(value) > limit:
        return Rejection(RejectReason.TOO_LONG, f"'{name}' has {len(value)} entries, limit {limit}")
    for index, entry in enumerate(value):
        rejection = _check_id(f"{name}[{index}]", entry)
        if rejection is not None:
            return rejection
    return tuple(dict.fromkeys(value))


def _check_attributes(attributes: object) -> Rejection | None:
    """A flat object: at most `MAX_ATTRIBUTES` keys of up to 128 chars, each value a
    string (up to 1024 chars), a number or a bool."""
    if not isinstance(attributes, dict):
        return Rejection(
            RejectReason.WRONG_TYPE, f"'attributes' must be an object, got {_kind(attributes)}"
        )
    if len(attributes) > MAX_ATTRIBUTES:
        return Rejection(
            RejectReason.TOO_LONG,
            f"'attributes' has {len(attributes)} keys, limit {MAX_ATTRIBUTES}",
        )
    for name, value in attributes.items():
        where = f"attributes['{name[:40]}']"
        if not name or len(name) > MAX_ID_CHARS:
            return Rejection(
                RejectReason.EMPTY_FIELD if not name else RejectReason.TOO_LONG,
                f"an attribute name is {len(name)} chars; 1 to {MAX_ID_CHARS} are accepted",
            )
        if isinstance(value, str):
            if len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
                return Rejection(
                    RejectReason.TOO_LONG,
                    f"{where} is {len(value)} chars, limit {MAX_ATTRIBUTE_VALUE_CHARS}",
                )
        elif not isinstance(value, bool | int | float):
            return Rejection(
                RejectReason.WRONG_TYPE,
                f"{where} must be a string, number or bool, got {_kind(value)}",
            )
    return None
