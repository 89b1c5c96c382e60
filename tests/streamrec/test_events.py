"""The event contract: every input is an Event or a Rejection with the right reason."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.events import (
    MAX_TS_MS,
    SECONDS_FROM,
    SECONDS_UNTIL,
    Event,
    EventType,
    Rejection,
    RejectReason,
    parse_event,
)

VALID = {
    "event_id": "e1",
    "user_id": "u1",
    "item_id": "i1",
    "type": "click",
    "ts": 1_700_000_000_000,
}


def body(**changes: object) -> bytes:
    fields = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in fields.items() if v is not ...})


def test_valid_event_is_parsed() -> None:
    event = parse_event(body(context={"device": "ios", "page": 3}, price=9.5, quantity=2))
    assert event == Event(
        "e1", "u1", "i1", EventType.CLICK, 1_700_000_000_000,
        context={"device": "ios", "page": 3}, price=9.5, quantity=2.0,
    )  # fmt: skip


def test_rfc3339_timestamp_is_converted_to_ms() -> None:
    event = parse_event(body(ts="2023-11-14T22:13:20.5+00:00"))
    assert isinstance(event, Event)
    assert event.ts_ms == 1_700_000_000_500


def test_unknown_extra_fields_are_ignored() -> None:
    assert isinstance(parse_event(body(campaign="x")), Event)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"x" * 70_000, RejectReason.TOO_LARGE),
        (b'{"event_id": "\xff"}', RejectReason.NOT_UTF8),
        (b'{"event_id": ', RejectReason.MALFORMED_JSON),
        (b"[1, 2]", RejectReason.NOT_OBJECT),
        (b'"click"', RejectReason.NOT_OBJECT),
        (body(user_id=...), RejectReason.MISSING_FIELD),
        (body(ts=...), RejectReason.MISSING_FIELD),
        (body(item_id=42), RejectReason.WRONG_TYPE),
        (body(ts=True), RejectReason.WRONG_TYPE),
        (body(ts=1.5e12), RejectReason.WRONG_TYPE),
        (body(type=7), RejectReason.WRONG_TYPE),
        (body(price="9"), RejectReason.WRONG_TYPE),
        (body(context=["a"]), RejectReason.WRONG_TYPE),
        (body(context={"a": {"b": 1}}), RejectReason.WRONG_TYPE),
        (body(context={"a": True}), RejectReason.WRONG_TYPE),
        (body(event_id=""), RejectReason.EMPTY_FIELD),
        (body(user_id="u" * 129), RejectReason.TOO_LONG),
        (body(context={f"k{i}": i for i in range(33)}), RejectReason.TOO_LONG),
        (body(ts="yesterday"), RejectReason.BAD_TIMESTAMP),
        (body(ts="2023-11-14T22:13:20"), RejectReason.BAD_TIMESTAMP),
        (body(ts=-1), RejectReason.BAD_TIMESTAMP),
        (body(ts=5_000_000_000_000), RejectReason.BAD_TIMESTAMP),
        (body(type="like"), RejectReason.UNKNOWN_TYPE),
        (body(price=-1), RejectReason.BAD_VALUE),
    ],
)
def test_each_kind_of_bad_input_has_its_reason(raw: bytes, reason: RejectReason) -> None:
    result = parse_event(raw)
    assert isinstance(result, Rejection), result
    assert result.reason is reason
    assert result.detail


NOW_MS = 1_700_000_000_000


def test_an_event_dated_after_the_clock_plus_the_skew_is_refused() -> None:
    hour_ms = 3_600_000
    on_time = parse_event(body(ts=NOW_MS + hour_ms), now_ms=NOW_MS, max_future_ms=hour_ms)
    assert isinstance(on_time, Event)
    for ts in (NOW_MS + hour_ms + 1, "2099-01-01T00:00:00Z", 4_000_000_000_000):
        result = parse_event(body(ts=ts), now_ms=NOW_MS, max_future_ms=hour_ms)
        assert isinstance(result, Rejection), ts
        assert result.reason is RejectReason.FUTURE_TIMESTAMP
    # Without a clock (files read back, the archive) nothing is judged against one.
    assert isinstance(parse_event(body(ts=4_000_000_000_000)), Event)


def test_seconds_sent_as_milliseconds_are_read_as_seconds() -> None:
    for seconds in (946_684_800, 1_700_000_000, 4_102_444_799):
        event = parse_event(body(ts=seconds))
        assert isinstance(event, Event)
        assert event.ts_ms == seconds * 1000
    # Outside 2000..2100 in seconds an integer stays milliseconds.
    for ms in (0, 1_030_000, 946_684_799, 4_102_444_800, NOW_MS):
        event = parse_event(body(ts=ms))
        assert isinstance(event, Event) and event.ts_ms == ms


def test_microseconds_sent_as_milliseconds_are_refused() -> None:
    result = parse_event(body(ts=1_700_000_000_000_000))
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.BAD_TIMESTAMP


@given(st.binary(max_size=512))
@settings(max_examples=500)
def test_arbitrary_bytes_give_an_event_or_a_rejection(raw: bytes) -> None:
    assert isinstance(parse_event(raw), Event | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "event_id": json_values,
            "user_id": json_values,
            "item_id": json_values,
            "type": st.sampled_from(["click", "purchase", "x"]) | json_values,
            "ts": st.integers(-10, 5 * 10**12) | json_values,
            "context": json_values,
            "price": json_values,
            "session_id": json_values,
        },
    )
)
@settings(max_examples=500)
def test_arbitrary_json_objects_give_an_event_or_a_rejection(fields: dict[str, object]) -> None:
    try:
        raw = orjson.dumps(fields)
    except TypeError:  # integers beyond 64 bits cannot be serialised by orjson
        return
    result = parse_event(raw)
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Event):
        assert parse_event(result.to_json()) == result


@given(
    st.builds(
        Event,
        event_id=st.text(min_size=1, max_size=128),
        user_id=st.text(min_size=1, max_size=128),
        item_id=st.text(min_size=1, max_size=128),
        type=st.sampled_from(EventType),
        # Not 11 January to 17 February 1970: those integers are read as seconds.
        ts_ms=st.integers(0, SECONDS_FROM - 1) | st.integers(SECONDS_UNTIL, MAX_TS_MS),
    )
)
def test_every_valid_event_survives_its_wire_form(event: Event) -> None:
    assert parse_event(event.to_json()) == event
