"""POST /v1/events against the real broker: each event judged by the event contract,
the valid ones on Kafka (keyed by user, with the schema-version header) before the
202, each event's outcome in the answer; and the HTTP conventions every route keeps
(/v1 paths, X-Request-ID, 404/405 in the error shape)."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import orjson

from bench.scenarios.workers import read_topic
from streamrec.topics import ensure_topics
from tests.model_server.conftest import Served, in_process

EVENT_SCHEMA = json.loads(
    resources.files("streamrec").joinpath("schemas/event.schema.json").read_text()
)


def event(n: int, **fields: object) -> dict[str, object]:
    return {"event_id": f"h{n}", "user_id": f"web-{n % 2}", "item_id": f"i{n}",
            "type": "click", "ts": 1_767_225_600_000 + n, **fields}  # fmt: skip


async def test_a_batch_is_judged_per_event_and_the_valid_ones_are_on_kafka(
    served: Served,
) -> None:
    settings = served.settings
    ensure_topics(settings)
    batch = [
        event(1),
        {"event_id": "bad", "user_id": "u", "type": "click", "ts": 5},  # no item_id
        event(2, type="purchase", price=9.5),
        "not an event",
        event(3, type="hover"),
    ]
    async with in_process(settings) as (client, _):
        answer = await client.post("/v1/events", json=batch)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert (body["accepted"], body["rejected"], body["not_written"]) == (2, 3, 0)
        outcomes = [(o["index"], o["outcome"], o.get("reason")) for o in body["events"]]
        assert outcomes == [
            (0, "accepted", None),
            (1, "rejected", "missing_field"),
            (2, "accepted", None),
            (3, "rejected", "not_object"),
            (4, "rejected", "unknown_type"),
        ]
        wrapped = await client.post("/v1/events", json={"events": [event(4)]})
        assert wrapped.status_code == 202 and wrapped.json()["accepted"] == 1

        for bad, status, error in (
            (b"[", 400, "malformed_json"),
            (b"[]", 422, "invalid_request"),
            (b'{"event": []}', 422, "invalid_request"),
            (orjson.dumps([event(n) for n in range(1001)]), 422, "invalid_request"),
        ):
            refused = await client.post("/v1/events", content=bad)
            assert (refused.status_code, refused.json()["error"]) == (status, error), bad[:40]
        huge = await client.post("/v1/events", content=b"[" + b" " * 2_000_000 + b"]")
        assert huge.status_code == 413 and huge.json()["error"] == "body_too_large"

    clicks = read_topic(settings, settings.topic_clicks, expected=2)
    purchases = read_topic(settings, settings.topic_purchases, expected=1)
    assert sorted(orjson.loads(r.value)["event_id"] for r in clicks) == ["h1", "h4"]
    (purchase,) = purchases
    assert purchase.key == b"web-0" and orjson.loads(purchase.value)["price"] == 9.5
    for record in [*clicks, *purchases]:
        assert record.headers == {"schema-version": "1"}
        jsonschema.validate(orjson.loads(record.value), EVENT_SCHEMA)


async def test_without_kafka_the_valid_events_are_not_written_and_the_answer_says_so(
    served: Served,
) -> None:
    settings = served.settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    async with in_process(settings) as (client, _):
        answer = await client.post("/v1/events", json=[event(1), {"bad": True}])
        # Recommendations go on without Kafka.
        assert (await client.post("/v1/recommend", json={"user_id": "x"})).status_code == 200
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    body = answer.json()
    assert (body["accepted"], body["rejected"], body["not_written"]) == (0, 1, 1)
    assert body["events"][0]["outcome"] == "not_written"
    assert "127.0.0.1:1" in body["events"][0]["detail"]


async def test_routes_keep_the_http_conventions(served: Served) -> None:
    async with in_process(served.settings) as (client, _):
        versioned = await client.post("/v1/recommend", json={"user_id": "x", "k": 3})
        alias = await client.post("/recommend", json={"user_id": "x", "k": 3})
        assert versioned.status_code == alias.status_code == 200
        assert versioned.json()["items"] == alias.json()["items"]

        given = await client.get("/v1/model", headers={"X-Request-ID": "trace-42.a"})
        assert given.headers["x-request-id"] == "trace-42.a"
        made = await client.get("/healthz")
        assert len(made.headers["x-request-id"]) == 32
        hostile = await client.get("/healthz", headers={"X-Request-ID": "a\tb" + "x" * 200})
        assert hostile.headers["x-request-id"] != "a\tb" + "x" * 200

        missing = await client.get("/v1/nothing")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        wrong = await client.get("/v1/recommend")
        assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
        assert wrong.headers["allow"] == "POST"
        assert "x-request-id" in missing.headers
