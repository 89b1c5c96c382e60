"""The forget request's contract: what `parse_forget` takes and refuses (the JSON
Schema agrees), and that a request names the partition the user's events go to."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.events import Rejection, RejectReason
from streamrec.forget import ForgetRequest, Horizon, parse_forget, user_partition
from tests.streamrec.test_wire_schemas import schema, valid

FORGET = schema("forget")


def test_a_request_round_trips_and_validates() -> None:
    request = ForgetRequest("u 1/é", 1_765_000_000_000, (Horizon("clicks", 3, 120),))
    assert parse_forget(b"u 1/\xc3\xa9", request.to_json()) == request
    assert valid(orjson.loads(request.to_json()), FORGET)
    # A bare tombstone is a request, dated by its message, with no horizon.
    assert parse_forget(b"u1", None, 5) == ForgetRequest("u1", 5)


def test_bad_requests_are_rejected_with_a_reason() -> None:
    cases: list[tuple[bytes | None, bytes | None, RejectReason]] = [
        (None, b'{"user_id": "u"}', RejectReason.MISSING_FIELD),
        (b"\xff", None, RejectReason.NOT_UTF8),
        (b"", None, RejectReason.EMPTY_FIELD),
        (b"u" * 129, None, RejectReason.TOO_LONG),
        (b"u", b"{", RejectReason.MALFORMED_JSON),
        (b"u", b"[]", RejectReason.NOT_OBJECT),
        (b"u", b"{}", RejectReason.MISSING_FIELD),
        (b"u", b'{"user_id": "v"}', RejectReason.BAD_VALUE),
        (b"u", b'{"user_id": "u", "requested_ms": -1}', RejectReason.WRONG_TYPE),
        (b"u", b'{"user_id": "u", "horizon": {}}', RejectReason.WRONG_TYPE),
        (b"u", b'{"user_id": "u", "horizon": [{"topic": "c", "partition": 0}]}',
         RejectReason.WRONG_TYPE),
        (b"u", b"x" * 70_000, RejectReason.TOO_LARGE),
    ]  # fmt: skip
    for key, value, reason in cases:
        judged = parse_forget(key, value)
        assert isinstance(judged, Rejection) and judged.reason == reason, (key, value, judged)


ids = st.text(min_size=0, max_size=130)
numbers = st.one_of(st.integers(-5, 2**40), st.booleans(), st.none(), st.text(max_size=3))
entries = st.fixed_dictionaries(
    {}, optional={"topic": st.one_of(ids, numbers), "partition": numbers, "offset": numbers}
)
requests = st.fixed_dictionaries(
    {"user_id": st.one_of(ids, numbers)},
    optional={"requested_ms": numbers, "horizon": st.one_of(st.lists(entries, max_size=3), ids)},
)


@settings(max_examples=300, deadline=None)
@given(requests)
def test_the_parser_never_raises_and_agrees_with_the_schema(body: dict[str, Any]) -> None:
    user_id = body["user_id"]
    key = user_id.encode() if isinstance(user_id, str) else b"k"
    parsed = parse_forget(key, orjson.dumps(body))
    assert isinstance(parsed, ForgetRequest) == valid(body, FORGET), (body, parsed)


@given(st.text(min_size=1, max_size=128), st.integers(1, 64))
def test_a_request_names_the_partition_a_producer_gives_the_users_events(
    user_id: str, partitions: int
) -> None:
    """aiokafka's partitioner (the worker's, the server's POST /v1/events): written
    apart from kafka-python's, which `user_partition` uses."""
    everything = list(range(partitions))
    expected = DefaultPartitioner()(user_id.encode(), everything, everything)
    assert user_partition(user_id, partitions) == expected
