"""The catalogue contract: every message is a record, a delete or a Rejection with the
right reason."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.events import MAX_TS_MS, SECONDS_FROM, SECONDS_UNTIL, Rejection, RejectReason
from streamrec.items import (
    ItemDelete,
    ItemRecord,
    parse_item,
    parse_item_message,
)

VALID = {"item_id": "i1", "ts": 1_700_000_000_000}
NOW_MS = 1_700_000_000_000


def body(**changes: object) -> bytes:
    fields = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in fields.items() if v is not ...})


def test_a_full_record_is_parsed() -> None:
    record = parse_item(
        body(
            available=False,
            category=["shoes", "sale", "shoes"],
            title="Trail runner",
            price=59,
            tags=["red", "gore-tex"],
            attributes={"brand": "acme", "size": 42, "waterproof": True, "weight_kg": 0.6},
            campaign="ignored",
        )
    )
    assert record == ItemRecord(
        "i1", 1_700_000_000_000, available=False, categories=("shoes", "sale"),
        title="Trail runner", price=59.0, tags=("red", "gore-tex"),
        attributes={"brand": "acme", "size": 42, "waterproof": True, "weight_kg": 0.6},
    )  # fmt: skip


def test_the_least_record_is_an_available_item_without_fields() -> None:
    assert parse_item(body()) == ItemRecord("i1", 1_700_000_000_000)
    assert parse_item(body(category="shoes", available=None)) == ItemRecord(
        "i1", 1_700_000_000_000, categories=("shoes",)
    )


def test_timestamps_follow_the_event_rules() -> None:
    # Seconds from 2000 on are seconds; RFC 3339 needs a zone.
    assert parse_item(body(ts=1_700_000_000)) == ItemRecord("i1", 1_700_000_000_000)
    assert parse_item(body(ts="2023-11-14T22:13:20.5+00:00")) == ItemRecord("i1", 1_700_000_000_500)
    future = parse_item(body(ts=NOW_MS + 3_600_001), now_ms=NOW_MS)
    assert isinstance(future, Rejection) and future.reason is RejectReason.FUTURE_TIMESTAMP
    assert parse_item(body(ts=NOW_MS + 3_600_000), now_ms=NOW_MS) == ItemRecord(
        "i1", NOW_MS + 3_600_000
    )


def test_deleted_true_is_a_delete_whatever_else_the_record_holds() -> None:
    assert parse_item(body(deleted=True, title=7)) == ItemDelete("i1", 1_700_000_000_000)
    assert parse_item(body(deleted=False)) == ItemRecord("i1", 1_700_000_000_000)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"x" * 70_000, RejectReason.TOO_LARGE),
        (b'{"item_id": "\xff"}', RejectReason.NOT_UTF8),
        (b'{"item_id": ', RejectReason.MALFORMED_JSON),
        (b"[1, 2]", RejectReason.NOT_OBJECT),
        (body(item_id=...), RejectReason.MISSING_FIELD),
        (body(ts=...), RejectReason.MISSING_FIELD),
        (body(item_id=42), RejectReason.WRONG_TYPE),
        (body(item_id=""), RejectReason.EMPTY_FIELD),
        (body(item_id="i" * 129), RejectReason.TOO_LONG),
        (body(ts=True), RejectReason.WRONG_TYPE),
        (body(ts="yesterday"), RejectReason.BAD_TIMESTAMP),
        (body(ts=5_000_000_000_000), RejectReason.BAD_TIMESTAMP),
        (body(ts="2099-01-01T00:00:00Z"), RejectReason.FUTURE_TIMESTAMP),
        (body(available="yes"), RejectReason.WRONG_TYPE),
        (body(available=1), RejectReason.WRONG_TYPE),
        (body(deleted="true"), RejectReason.WRONG_TYPE),
        (body(category=3), RejectReason.WRONG_TYPE),
        (body(category={"a": 1}), RejectReason.WRONG_TYPE),
        (body(category=["a", 3]), RejectReason.WRONG_TYPE),
        (body(category=""), RejectReason.EMPTY_FIELD),
        (body(category="c" * 129), RejectReason.TOO_LONG),
        (body(category=[f"c{n}" for n in range(17)]), RejectReason.TOO_LONG),
        (body(tags="red"), RejectReason.WRONG_TYPE),
        (body(tags=[""]), RejectReason.EMPTY_FIELD),
        (body(tags=[f"t{n}" for n in range(33)]), RejectReason.TOO_LONG),
        (body(title=5), RejectReason.WRONG_TYPE),
        (body(title=""), RejectReason.EMPTY_FIELD),
        (body(title="t" * 1025), RejectReason.TOO_LONG),
        (body(price="9"), RejectReason.WRONG_TYPE),
        (body(price=True), RejectReason.WRONG_TYPE),
        (body(price=-0.01), RejectReason.BAD_VALUE),
        (body(attributes=["a"]), RejectReason.WRONG_TYPE),
        (body(attributes={"a": {"b": 1}}), RejectReason.WRONG_TYPE),
        (body(attributes={"a": [1]}), RejectReason.WRONG_TYPE),
        (body(attributes={"a": None}), RejectReason.WRONG_TYPE),
        (body(attributes={"": 1}), RejectReason.EMPTY_FIELD),
        (body(attributes={"k" * 129: 1}), RejectReason.TOO_LONG),
        (body(attributes={"a": "v" * 1025}), RejectReason.TOO_LONG),
        (body(attributes={f"k{n}": n for n in range(33)}), RejectReason.TOO_LONG),
    ],
)
def test_bad_records_are_rejected_with_their_reason(raw: bytes, reason: RejectReason) -> None:
    result = parse_item(raw, now_ms=NOW_MS)
    assert isinstance(result, Rejection), result
    assert result.reason is reason, result.detail
    assert result.detail


def test_the_message_key_must_be_the_item_id() -> None:
    assert parse_item_message(b"i1", body()) == ItemRecord("i1", 1_700_000_000_000)
    for key, reason in [
        (None, RejectReason.MISSING_FIELD),
        (b"i2", RejectReason.BAD_VALUE),
        (b"\xff", RejectReason.NOT_UTF8),
    ]:
        result = parse_item_message(key, body())
        assert isinstance(result, Rejection) and result.reason is reason, (key, result)


def test_a_tombstone_deletes_the_keys_item_at_the_message_timestamp() -> None:
    assert parse_item_message(b"i1", None, message_ts_ms=1_234) == ItemDelete("i1", 1_234)
    for key, ts, reason in [
        (b"i1", None, RejectReason.MISSING_FIELD),
        (b"i1", -1, RejectReason.MISSING_FIELD),
        (None, 1_234, RejectReason.MISSING_FIELD),
        (b"", 1_234, RejectReason.EMPTY_FIELD),
        (b"i" * 129, 1_234, RejectReason.TOO_LONG),
        (b"i1", NOW_MS + 3_600_001, RejectReason.FUTURE_TIMESTAMP),
    ]:
        result = parse_item_message(key, None, message_ts_ms=ts, now_ms=NOW_MS)
        assert isinstance(result, Rejection) and result.reason is reason, (key, ts, result)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@given(st.binary(max_size=512), st.none() | st.binary(max_size=40), st.none() | st.integers())
@settings(max_examples=300)
def test_arbitrary_messages_give_a_change_or_a_rejection(
    raw: bytes, key: bytes | None, message_ts: int | None
) -> None:
    for value in (raw, None):
        result = parse_item_message(key, value, message_ts_ms=message_ts, now_ms=NOW_MS)
        assert isinstance(result, ItemRecord | ItemDelete | Rejection)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "item_id": st.sampled_from(["i1", ""]) | json_values,
            "ts": st.integers(-10, 5 * 10**12) | json_values,
            "available": json_values,
            "deleted": json_values,
            "category": json_values,
            "title": json_values,
            "price": json_values,
            "tags": json_values,
            "attributes": json_values,
        },
    )
)
@settings(max_examples=500)
def test_arbitrary_records_never_raise_and_what_passes_is_within_bounds(
    fields: dict[str, object],
) -> None:
    # The standard library writes what orjson will not (64-bit overflow, Infinity).
    result = parse_item(json.dumps(fields).encode(), now_ms=NOW_MS)
    assert isinstance(result, ItemRecord | ItemDelete | Rejection)
    if isinstance(result, Rejection):
        assert result.detail
        return
    assert 1 <= len(result.item_id) <= 128 and 0 <= result.ts_ms <= NOW_MS + 3_600_000
    if isinstance(result, ItemRecord):
        assert all(1 <= len(c) <= 128 for c in result.categories)
        assert len(set(result.categories)) == len(result.categories) <= 16
        assert result.price is None or result.price >= 0
        assert len(result.attributes or {}) <= 32


ids = st.text(min_size=1, max_size=128)
attribute_values = (
    st.text(max_size=1024)
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
)


@given(
    st.builds(
        ItemRecord,
        item_id=ids,
        # Not 11 January to 17 February 1970: those integers are read as seconds.
        ts_ms=st.integers(0, SECONDS_FROM - 1) | st.integers(SECONDS_UNTIL, MAX_TS_MS),
        available=st.booleans(),
        categories=st.lists(ids, max_size=16, unique=True).map(tuple),
        title=st.none() | st.text(min_size=1, max_size=1024),
        price=st.none() | st.floats(min_value=0, allow_infinity=False),
        tags=st.lists(ids, max_size=32, unique=True).map(tuple),
        attributes=st.none() | st.dictionaries(ids, attribute_values, min_size=1, max_size=32),
    )
)
def test_every_valid_record_survives_its_wire_form(record: ItemRecord) -> None:
    assert parse_item(record.to_json()) == record
    assert parse_item_message(record.item_id.encode(), record.to_json()) == record
    delete = ItemDelete(record.item_id, record.ts_ms)
    assert parse_item(delete.to_json()) == delete
