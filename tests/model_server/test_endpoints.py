"""The HTTP contract on real Redis and a real ONNX bundle, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.scenarios.users import apply, events_for
from devtools.scrape import counter_total
from streamrec import __version__
from streamrec.events import EventType
from streamrec.features import FEATURE_NAMES
from streamrec.keys import recommended_key, user_vector_key
from tests.model_server.conftest import ADMIN_TOKEN, Served, in_process, wait_until_async

pytestmark = pytest.mark.integration


async def test_recommend_ranks_for_a_user_with_history(served: Served) -> None:
    await apply(served.settings, events_for("alice", served.items[:5]))
    async with in_process(served.settings) as (client, _):
        response = await client.post("/recommend", json={"user_id": "alice", "k": 10})
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == "alice"
    assert body["model_version"] == served.first.version
    assert body["fallback"] is None
    assert len(body["items"]) == 10
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["item_id"] in served.models.vocab for item in body["items"])


async def test_a_purchased_item_disappears(served: Served) -> None:
    await apply(served.settings, events_for("bob", served.items[:8]))
    async with in_process(served.settings) as (client, _):
        before = (await client.post("/recommend", json={"user_id": "bob", "k": 5})).json()
        bought = before["items"][0]["item_id"]
        await apply(served.settings, events_for("bob", [bought], EventType.PURCHASE, start=100))
        after = (await client.post("/recommend", json={"user_id": "bob", "k": 5})).json()
        excluded = after["items"][0]["item_id"]
        filtered = await client.post(
            "/recommend", json={"user_id": "bob", "k": 5, "exclude": [excluded]}
        )
    assert bought not in [item["item_id"] for item in after["items"]]
    assert len(after["items"]) == 5
    assert excluded not in [item["item_id"] for item in filtered.json()["items"]]


async def test_candidates_come_from_the_manifest_and_trending_fills_filtered_gaps(
    served: Served,
) -> None:
    manifest = served.first
    trained_on = manifest.retrieval_candidates
    assert trained_on is not None and trained_on < served.settings.retrieval_candidates
    assert manifest.trending_candidates > 0
    trending_item = served.items[-1]
    await apply(served.settings, events_for("erin", served.items[:4]))
    # More trending items than the candidates take: the others fill filtered gaps.
    others = served.items[-(manifest.trending_candidates + 10) :]
    await apply(served.settings, events_for("others", [*others, trending_item, trending_item]))
    async with in_process(served.settings) as (client, _):
        every = await client.post("/recommend", json={"user_id": "erin", "k": 200})

        def candidate_counts(text: str) -> dict[str, float]:
            (family,) = [
                f
                for f in text_string_to_metric_families(text)
                if f.name == "streamrec_serve_candidates"
            ]
            return {s.name: s.value for s in family.samples if s.name.endswith(("_sum", "_count"))}

        counted = candidate_counts((await client.get("/metrics")).text)
        # Retrieval's C plus the extras (the user's recent items, co-visitation
        # neighbours and the top trending items retrieval missed); the ranked
        # candidates come first, trending after.
        n = int(counted["streamrec_serve_candidates_sum"])
        extras = (
            manifest.recent_candidates + manifest.covis_candidates + manifest.trending_candidates
        )
        assert trained_on <= n <= trained_on + extras
        candidates = [item["item_id"] for item in every.json()["items"]][:n]
        filtered = await client.post(
            "/recommend", json={"user_id": "erin", "k": 3, "exclude": candidates}
        )
    assert len(set(candidates)) == n and trending_item in candidates
    items = [item["item_id"] for item in filtered.json()["items"]]
    assert filtered.json()["fallback"] is None
    assert len(items) == 3 and not set(items) & set(candidates)


async def test_the_users_own_recent_items_are_among_the_candidates(served: Served) -> None:
    """People go back to what they just looked at: every item the user clicked is a
    candidate (the bundle says how many, as it was trained), purchases are not."""
    assert served.first.recent_candidates >= 4
    clicked, bought = served.items[-4:], served.items[-5]
    await apply(served.settings, events_for("gina", clicked))
    await apply(served.settings, events_for("gina", [bought], EventType.PURCHASE, start=50))
    async with in_process(served.settings) as (client, _):
        every = await client.post("/recommend", json={"user_id": "gina", "k": 200})
    candidates = {item["item_id"] for item in every.json()["items"]}
    assert set(clicked) <= candidates
    assert bought not in candidates


async def test_with_the_purchase_filter_off_a_bought_item_can_come_back(served: Served) -> None:
    """`serve_exclude_purchased=False`: the ranker decides (people buy again, and
    click what they bought), so the bought item is among the candidates."""
    bought = served.items[-6]
    await apply(served.settings, events_for("hana", served.items[-9:-7]))
    await apply(served.settings, events_for("hana", [bought], EventType.PURCHASE, start=50))
    settings = served.settings.model_copy(update={"serve_exclude_purchased": False})
    async with in_process(settings) as (client, _):
        every = await client.post("/recommend", json={"user_id": "hana", "k": 200})
    assert bought in {item["item_id"] for item in every.json()["items"]}


async def test_recommended_items_are_remembered_for_the_hit_rate(served: Served) -> None:
    await apply(served.settings, events_for("fred", served.items[:4]))
    async with in_process(served.settings) as (client, app):
        body = (await client.post("/recommend", json={"user_id": "fred", "k": 5})).json()
        store = app.state.serving.store
        await wait_until_async(lambda: store.redis.exists(recommended_key("fred")))
        shown = await store.redis.zrange(recommended_key("fred"), 0, -1)
    assert {item_id.decode() for item_id in shown} == {item["item_id"] for item in body["items"]}


def encodes(metrics: str) -> float:
    """Requests that ran the encoder (the stage histogram's count)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "streamrec_serve_stage_seconds"
        for sample in family.samples
        if sample.name.endswith("_count") and sample.labels["stage"] == "encode"
    )


async def test_the_user_vector_is_cached_until_the_users_state_changes(served: Served) -> None:
    await apply(served.settings, events_for("gina", served.items[:4]))
    async with in_process(served.settings) as (client, app):
        first = (await client.post("/recommend", json={"user_id": "gina", "k": 5})).json()
        store = app.state.serving.store
        await wait_until_async(lambda: store.redis.exists(user_vector_key("gina")))
        again = (await client.post("/recommend", json={"user_id": "gina", "k": 5})).json()
        cached = encodes((await client.get("/metrics")).text)
        await apply(served.settings, events_for("gina", served.items[4:6], start=10))
        await client.post("/recommend", json={"user_id": "gina", "k": 5})
        after_event = encodes((await client.get("/metrics")).text)
    assert again["items"] == first["items"]
    assert cached == 1 and after_event == 2


async def test_a_user_without_history_gets_trending(served: Served) -> None:
    popular, bought = served.items[10], served.items[11]
    others = events_for("u1", [popular, popular, served.items[12]])
    others += events_for("u2", [popular, bought])
    others += events_for("u3", [bought], EventType.PURCHASE)
    await apply(served.settings, others)
    async with in_process(served.settings) as (client, _):
        response = await client.post("/recommend", json={"user_id": "newcomer", "k": 3})
    body = response.json()
    assert body["fallback"] == "trending"
    # Every event counts alike (what a newcomer touches next): `popular` (3 clicks)
    # leads `bought` (1 click + 1 purchase).
    assert [item["item_id"] for item in body["items"]] == [popular, bought, served.items[12]]


async def test_explain_returns_the_features_behind_each_score(served: Served) -> None:
    # A budget no busy machine overruns: features come only with a ranked answer.
    settings = served.settings.model_copy(update={"serve_budget_ms": 60_000})
    await apply(settings, events_for("carol", served.items[:3]))
    async with in_process(settings) as (client, _):
        body = (
            await client.post("/recommend", json={"user_id": "carol", "k": 3, "explain": True})
        ).json()
    for item in body["items"]:
        assert set(item["features"]) == {*FEATURE_NAMES, "retrieval_score"}


async def test_over_budget_answers_in_retrieval_order(served: Served) -> None:
    settings = served.settings.model_copy(update={"serve_budget_ms": 1e-6})
    await apply(settings, events_for("dave", served.items[:3]))
    async with in_process(settings) as (client, _):
        body = (await client.post("/recommend", json={"user_id": "dave", "k": 4})).json()
        metrics = (await client.get("/metrics")).text
    assert body["fallback"] == "retrieval"
    assert len(body["items"]) == 4
    assert counter_total(metrics, "streamrec_serve_fallbacks", kind="retrieval") == 1


async def test_score_reports_unknown_items_per_item(served: Served) -> None:
    await apply(served.settings, events_for("erin", served.items[:3]))
    known = served.items[20:23]
    async with in_process(served.settings) as (client, _):
        response = await client.post(
            "/score", json={"user_id": "erin", "item_ids": [known[0], "no-such-item", *known[1:]]}
        )
        newcomer = await client.post("/score", json={"user_id": "nobody", "item_ids": known})
    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["item_id"] for item in items] == [known[0], "no-such-item", *known[1:]]
    assert items[1] == {"item_id": "no-such-item", "score": None, "error": "unknown_item"}
    assert all(isinstance(items[i]["score"], float) for i in (0, 2, 3))
    assert newcomer.status_code == 200
    assert all(isinstance(item["score"], float) for item in newcomer.json()["items"])


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/recommend", {"k": 5}, 422, "user_id"),
        ("/recommend", {"user_id": "", "k": 5}, 422, "user_id"),
        ("/recommend", {"user_id": "u" * 129}, 422, "user_id"),
        ("/recommend", {"user_id": "u", "k": 0}, 422, "k"),
        ("/recommend", {"user_id": "u", "k": 10_000}, 422, "k"),
        ("/recommend", {"user_id": "u", "k": "many"}, 422, "k"),
        ("/recommend", {"user_id": "u", "exclude": ["i"] * 1001}, 422, "exclude"),
        ("/recommend", {"user_id": "u", "colour": "red"}, 422, "colour"),
        ("/recommend", [1, 2], 422, "body"),
        ("/score", {"user_id": "u", "item_ids": []}, 422, "item_ids"),
        ("/score", {"user_id": "u", "item_ids": ["i"] * 1001}, 422, "item_ids"),
        ("/score", {"user_id": "u"}, 422, "item_ids"),
        # Strict where the schema says integer, boolean or string: no coercion.
        ("/recommend", {"user_id": "u", "k": "20"}, 422, "k"),
        ("/recommend", {"user_id": "u", "k": True}, 422, "k"),
        ("/recommend", {"user_id": "u", "k": 20.5}, 422, "k"),
        ("/recommend", {"user_id": "u", "explain": 0}, 422, "explain"),
        ("/recommend", {"user_id": "u", "explain": "true"}, 422, "explain"),
        ("/recommend", {"user_id": 7}, 422, "user_id"),
        ("/score", {"user_id": "u", "item_ids": [1]}, 422, "item_ids"),
        # Context as the event contract holds it: finite numbers, no booleans, keys of
        # at most 128 characters, integers that fit 64 bits.
        ("/recommend", b'{"user_id": "u", "context": {"a": NaN}}', 422, "context"),
        ("/recommend", b'{"user_id": "u", "context": {"a": Infinity}}', 422, "context"),
        ("/recommend", b'{"user_id": "u", "context": {"a": -Infinity}}', 422, "context"),
        ("/recommend", b'{"user_id": "u", "context": {"a": 1e400}}', 422, "context"),
        ("/recommend", {"user_id": "u", "context": {"a": True}}, 422, "context"),
        ("/recommend", {"user_id": "u", "context": {"k" * 129: "v"}}, 422, "context"),
        ("/recommend", {"user_id": "u", "context": {"a": 2**70}}, 422, "context"),
        ("/recommend", {"user_id": "u", "context": {"a": "v" * 1025}}, 422, "context"),
        ("/admin/rollback", {"version": 3}, 422, "version"),
    ],
)
async def test_bad_requests_get_4xx_with_reasons(
    served: Served, path: str, body: object, status: int, field: str
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with in_process(served.settings) as (client, _):
        if isinstance(body, bytes):
            response = await client.post(path, content=body, headers=headers)
        else:
            response = await client.post(path, json=body, headers=headers)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["error"] == "invalid_request"
    assert any(d["field"].startswith(field) for d in problem["detail"]), problem
    assert all(d["message"] for d in problem["detail"])


async def test_malformed_and_oversized_bodies(served: Served) -> None:
    async with in_process(served.settings) as (client, _):
        malformed = await client.post("/recommend", content=b'{"user_id": ')
        huge = await client.post(
            "/score", content=b"x" * (served.settings.serve_max_body_bytes + 1)
        )
        wrong_method = await client.get("/recommend")
        metrics = (await client.get("/metrics")).text
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "malformed_json"
    assert huge.status_code == 413
    assert "limited to" in huge.json()["detail"]
    assert wrong_method.status_code == 405
    assert (
        counter_total(metrics, "streamrec_serve_requests", endpoint="recommend", status="4xx") == 1
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": "Basic x"},
    ],
)
async def test_admin_needs_the_bearer_token(served: Served, headers: dict[str, str]) -> None:
    async with in_process(served.settings) as (client, _):
        reload = await client.post("/admin/reload", headers=headers)
        rollback = await client.post("/admin/rollback", headers=headers)
    for response in (reload, rollback):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


async def test_admin_is_disabled_without_a_configured_token(served: Served) -> None:
    settings = served.settings.model_copy(update={"admin_token": ""})
    async with in_process(settings) as (client, _):
        response = await client.post("/admin/reload", headers={"Authorization": "Bearer "})
    assert response.status_code == 401
    assert "disabled" in response.json()["detail"]


async def test_health_model_metrics_and_schema(served: Served) -> None:
    async with in_process(served.settings) as (client, _):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = (await client.get("/readyz")).json()
        model = (await client.get("/model")).json()
        metrics = (await client.get("/metrics")).text
        schema = (await client.get("/openapi.json")).json()
    assert ready == {"ready": True, "model_version": served.first.version, "serving": "model"}
    assert model["model_version"] == served.first.version
    assert model["items"] == len(served.models.vocab)
    assert f'streamrec_model_info{{version="{served.first.version}"}} 1.0' in metrics
    assert set(schema["paths"]) >= {"/v1/recommend", "/v1/score", "/v1/admin/reload"}
    recommend = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    assert recommend["k"]["maximum"] == served.settings.serve_max_k


async def test_items_the_model_never_saw_are_served_from_history_and_covisitation(
    served: Served,
) -> None:
    """No retrain needed: a new item the user touched, and one that others touched
    right after it, are candidates the moment the events land; trending fills up."""
    await apply(served.settings, events_for("frank", ["brand-new-1", "brand-new-2"]))
    await apply(served.settings, events_for("hank", ["brand-new-2", "brand-new-3"], start=10))
    await apply(served.settings, events_for("gina", served.items[:2], start=20))
    async with in_process(served.settings) as (client, _):
        body = (await client.post("/recommend", json={"user_id": "frank", "k": 8})).json()
        nobody = (await client.post("/recommend", json={"user_id": "nobody", "k": 5})).json()
    items = [item["item_id"] for item in body["items"]]
    assert body["fallback"] is None
    assert {"brand-new-1", "brand-new-2", "brand-new-3"} <= set(items)
    assert set(items) >= set(served.items[:2])  # trending filled the rest
    assert nobody["fallback"] == "trending"


async def test_a_streamed_body_over_the_limit_is_cut_off(served: Served) -> None:
    limit = served.settings.serve_max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 1024 + 2):
            yield b" " * 1024

    async with in_process(served.settings) as (client, _):
        response = await client.post("/recommend", content=chunks())
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


async def test_a_flood_of_unknown_users_writes_nothing_to_redis(served: Served) -> None:
    """Reads need no token: only users with state (bounded like any state) have what
    they were shown remembered, so made-up user ids cannot fill Redis."""
    await apply(served.settings, events_for("others", served.items[:5]))
    await apply(served.settings, events_for("known", served.items[5:9]))
    async with in_process(served.settings) as (client, app):
        store = app.state.serving.store
        before = await store.redis.dbsize()
        for n in range(200):
            response = await client.post("/recommend", json={"user_id": f"made-up-{n}", "k": 20})
            assert response.json()["fallback"] == "trending"
        await client.post("/score", json={"user_id": "made-up-x", "item_ids": served.items[:3]})
        await asyncio.sleep(0.3)  # past the write-back's linger
        after_flood = await store.redis.dbsize()
        await client.post("/recommend", json={"user_id": "known", "k": 5})
        await wait_until_async(lambda: store.redis.exists(recommended_key("known")))
    assert after_flood == before


async def test_a_context_within_the_event_contract_is_accepted(served: Served) -> None:
    context = {"device": "mobile", "page": 3, "price": 9.5, "k" * 128: "v" * 1024}
    await apply(served.settings, events_for("others", served.items[:3]))
    async with in_process(served.settings) as (client, _):
        response = await client.post(
            "/recommend", json={"user_id": "u", "k": 3, "explain": False, "context": context}
        )
        # JSON Schema's integer: a number without a fraction.
        integral = await client.post("/recommend", json={"user_id": "u", "k": 3.0})
    assert response.status_code == 200, response.text
    assert integral.status_code == 200 and len(integral.json()["items"]) == 3, integral.text


# Keys and scopes (model_server/access.py): 401, 403 and 429 wherever a credential
# may be needed.
GUARDED = ("401", "403", "429")
EXPECTED_STATUSES = {
    ("/v1/recommend", "post"): {"200", "400", "408", "413", "422", "499", "500", "503", *GUARDED},
    ("/v1/score", "post"): {"200", "400", "408", "413", "422", "499", "500", "503", *GUARDED},
    ("/v1/similar", "post"): {"200", "400", "408", "413", "422", "499", "500", "503", *GUARDED},
    ("/v1/events", "post"): {"202", "400", "408", "413", "422", "499", "500", "503", *GUARDED},
    ("/v1/model", "get"): {"200", "500", "503", *GUARDED},
    ("/v1/versions", "get"): {"200", "500", *GUARDED},
    ("/healthz", "get"): {"200"},
    ("/readyz", "get"): {"200", "503"},
    ("/metrics", "get"): {"200"},
    ("/openapi.json", "get"): {"200"},
    ("/v1/admin/reload", "post"): {"200", "409", "500", "503", *GUARDED},
    ("/v1/admin/rollback", "post"): {
        *("200", "400", "408", "409", "413", "422", "499", "500", "503", *GUARDED)
    },
    ("/v1/admin/users/{user_id}", "delete"): {"202", "400", "500", "503", *GUARDED},
    ("/v1/admin/experiment", "get"): {"200", "409", "500", *GUARDED},
    ("/v1/admin/experiment", "put"): {
        *("201", "400", "408", "409", "413", "422", "499", "500", *GUARDED)
    },
    ("/v1/admin/experiment", "delete"): {"200", "409", "500", *GUARDED},
    ("/v1/admin/experiment/promote", "post"): {
        *("200", "400", "408", "409", "413", "422", "499", "500", "503", *GUARDED)
    },
}
# What answers in the shape of a successful call, not a problem.
SUCCESS_SHAPES = {
    ("/readyz", "503"),
    ("/v1/admin/experiment", "201"),
    ("/v1/events", "202"),
    ("/v1/events", "503"),
    ("/v1/admin/users/{user_id}", "202"),
}


async def test_the_schema_lists_every_status_each_endpoint_can_answer(served: Served) -> None:
    async with in_process(served.settings) as (client, _):
        schema = (await client.get("/openapi.json")).json()
    listed = {
        (path, method): set(operation["responses"])
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    assert listed == EXPECTED_STATUSES
    assert schema["info"]["version"] == __version__
    operation_ids = [
        op["operationId"] for methods in schema["paths"].values() for op in methods.values()
    ]
    assert len(set(operation_ids)) == len(operation_ids) == len(EXPECTED_STATUSES)
    for (path, method), _ in EXPECTED_STATUSES.items():
        request = schema["paths"][path][method].get("requestBody")
        if request is not None:
            (media,) = request["content"].values()
            assert "example" in media, path
    for (path, method), statuses in listed.items():
        responses = schema["paths"][path][method]["responses"]
        for status in statuses:
            (content,) = responses[status]["content"].values()
            assert "schema" in content, (path, status)
            if status != "200" and (path, status) not in SUCCESS_SHAPES:
                assert content["schema"]["$ref"].endswith("/ProblemBody"), (path, status)


async def test_an_items_score_does_not_depend_on_the_other_items_sent(served: Served) -> None:
    """/score ranks each item as if it were among the candidates /recommend ranks for
    this user: alone, repeated, among others, or inside /recommend, the same score."""
    settings = served.settings.model_copy(update={"serve_budget_ms": 60_000})
    await apply(settings, events_for("sam", served.items[:6]))
    async with in_process(settings) as (client, _):
        ranked = (await client.post("/recommend", json={"user_id": "sam", "k": 50})).json()
        assert ranked["fallback"] is None
        in_answer = {item["item_id"]: item["score"] for item in ranked["items"]}
        candidate, other = list(in_answer)[5], list(in_answer)[9]
        outsider = next(i for i in reversed(served.items) if i not in in_answer)

        async def scores(item_ids: list[str]) -> dict[str, float]:
            response = await client.post("/score", json={"user_id": "sam", "item_ids": item_ids})
            assert response.status_code == 200, response.text
            items = response.json()["items"]
            assert [item["item_id"] for item in items] == item_ids
            return {item["item_id"]: item["score"] for item in items}

        alone = await scores([candidate])
        repeated = await scores([candidate, candidate, candidate])
        among = await scores([outsider, candidate, other, *served.items[30:60]])
        outsider_alone = await scores([outsider])
    assert alone[candidate] == pytest.approx(in_answer[candidate], rel=1e-4, abs=1e-5)
    assert repeated[candidate] == alone[candidate]
    assert among[candidate] == pytest.approx(alone[candidate], rel=1e-5, abs=1e-6)
    assert among[other] == pytest.approx(in_answer[other], rel=1e-4, abs=1e-5)
    assert among[outsider] == pytest.approx(outsider_alone[outsider], rel=1e-5, abs=1e-6)
