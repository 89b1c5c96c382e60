"""The JSON Schemas in streamrec/schemas/ describe what streamrec writes and what its
parsers take: every record we produce validates, and the event schema and the event
parser agree on generated events (but for the receiver's clock, which no schema sees)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.simulator import simulate, simulate_catalogue
from model_server.feed import feed_record
from model_server.recommender import RankedItem, Recommendation
from streamrec.events import Event, parse_event
from streamrec.items import ItemChange, ItemDelete, parse_item


def schema(name: str) -> dict[str, Any]:
    text = resources.files("streamrec").joinpath(f"schemas/{name}.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


EVENT, ITEM, RECOMMENDATION = schema("event"), schema("item"), schema("recommendation")


def valid(document: object, against: dict[str, Any]) -> bool:
    return bool(jsonschema.Draft202012Validator(against).is_valid(document))


def test_what_we_produce_validates() -> None:
    for event in simulate(n_events=300):
        assert valid(orjson.loads(event.to_json()), EVENT), event
    records: list[ItemChange] = [*simulate_catalogue(), ItemDelete("i0001", 5)]
    for record in records:
        assert valid(orjson.loads(record.to_json()), ITEM), record
        assert parse_item(record.to_json()) == record
    answer = Recommendation([RankedItem("i1", 0.5), RankedItem("i2", 0.25)], "v1", None, 20)
    assert valid(orjson.loads(feed_record("u1", answer, 20, 1_700_000_000_000)), RECOMMENDATION)
    trending = Recommendation([RankedItem("i1", 3.0)], "v1", "trending", 0)
    assert valid(orjson.loads(feed_record("u1", trending, 1, 1_700_000_000_000)), RECOMMENDATION)
    no_model = Recommendation([RankedItem("i1", 3.0)], None, "trending", 0)
    assert valid(orjson.loads(feed_record("u1", no_model, 1, 1_700_000_000_000)), RECOMMENDATION)


def test_what_the_parsers_refuse_the_schemas_refuse() -> None:
    good = {"event_id": "e", "user_id": "u", "item_id": "i", "type": "click", "ts": 1000}
    assert valid(good, EVENT)
    for bad in (
        {**good, "type": "hover"},
        {**good, "user_id": ""},
        {**good, "ts": True},
        {**good, "price": -1},
        {**good, "context": {"k": [1]}},
        {k: v for k, v in good.items() if k != "ts"},
    ):
        assert not isinstance(parse_event(orjson.dumps(bad)), Event), bad
        assert not valid(bad, EVENT), bad
    assert not valid({"item_id": "i", "ts": 1, "category": []}, ITEM) or parse_item(
        b'{"item_id": "i", "ts": 1, "category": []}'
    )


ids = st.text(min_size=0, max_size=130)
INTS = st.integers(-(2**62), 2**62)
scalars = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=False), ids)
events = st.fixed_dictionaries(
    {
        "event_id": st.one_of(ids, scalars),
        "user_id": ids,
        "item_id": ids,
        "type": st.sampled_from(["click", "purchase", "view", "add_to_cart", "favorite", "x"]),
        "ts": st.one_of(st.integers(-10, 5_000_000_000_000), st.just("2026-01-01T00:00:00Z")),
    },
    optional={
        "session_id": ids,
        "price": st.one_of(st.floats(-5, 1e6, allow_nan=False), st.booleans()),
        "context": st.dictionaries(
            st.text(max_size=130),
            st.one_of(st.text(max_size=1030), INTS, st.lists(INTS)),
            max_size=34,
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_the_event_schema_and_the_parser_agree(body: dict[str, Any]) -> None:
    parsed = parse_event(orjson.dumps(body))  # no receiver clock: no future check
    assert isinstance(parsed, Event) == valid(body, EVENT), (body, parsed)
