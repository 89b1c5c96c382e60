"""A deployment boots before any model exists (issue 18): with
`serve_wait_for_model` the server starts ready, answers /recommend (and /similar)
from trending with `model_version` null, refuses what needs a model with 503
no_model, and swaps in the first version that opens as soon as it is published;
a refused first version leaves it on trending. Without the setting start-up still
stops at once with the reason (tests/test_startup_failures.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.scenarios.models import publish
from bench.scenarios.users import apply, events_for
from devtools.scrape import counter_total
from streamrec.catalogue import Catalogue
from streamrec.errors import StateError
from streamrec.events import EventType
from streamrec.items import ItemRecord
from streamrec.settings import Settings
from tests.model_server.conftest import Served, in_process, wait_until_async
from tests.streamrec.bad_bundles import spoil

pytestmark = pytest.mark.integration


def waiting_settings(served: Served, registry: Path) -> Settings:
    return served.settings.model_copy(
        update={"registry": registry, "serve_wait_for_model": True, "follow_announcements": False}
    )


async def _crowd(served: Served) -> list[str]:
    """Twelve items with events from a crowd (the first ones most popular), in two
    categories, the fourth out of stock; returns them."""
    items = served.items[:12]
    for n in range(6):
        await apply(served.settings, events_for(f"crowd{n}", items[: 12 - n]))
    catalogue = Catalogue(served.settings)
    try:
        await catalogue.apply_records_each(
            [
                ItemRecord(item, 1, available=n != 3, categories=("shoes" if n % 2 else "hats",))
                for n, item in enumerate(items)
            ]
        )
    finally:
        await catalogue.close()
    return items


def ids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [item["item_id"] for item in answer.json()["items"]]


async def recommend(client: httpx.AsyncClient, user_id: str, **body: Any) -> httpx.Response:
    return await client.post("/v1/recommend", json={"user_id": user_id, "k": 5, **body})


async def no_model_answers(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return counter_total(text, "streamrec_serve_fallbacks", kind="no_model")


async def test_a_server_without_a_model_serves_trending_then_swaps_in_the_first(
    served: Served, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-registry"
    settings = waiting_settings(served, empty)
    items = await _crowd(served)
    await apply(settings, events_for("ann", items[6:9]))
    await apply(settings, events_for("ann", [items[0]], EventType.PURCHASE, start=10))
    async with in_process(settings) as (client, _):
        alive = await client.get("/healthz")
        ready = await client.get("/readyz")
        trending = await recommend(client, "nobody", k=20)
        newcomer = await recommend(client, "nobody")
        ann = await recommend(client, "ann", exclude=[items[1]])
        shoes = await recommend(client, "ann", filter={"include_categories": ["shoes"]})
        score = await client.post("/v1/score", json={"user_id": "ann", "item_ids": items[:2]})
        similar = await client.post("/v1/similar", json={"item_id": items[0], "k": 5})
        model = await client.get("/v1/model")
        versions = await client.get("/v1/versions")
        counted = await no_model_answers(client)

        first = publish(served.models, empty)

        async def swapped() -> bool:
            ready: dict[str, object] = (await client.get("/readyz")).json()
            return ready["model_version"] == first.version

        await wait_until_async(swapped, 10)
        ready_after = await client.get("/readyz")
        ann_after = await recommend(client, "ann")
        newcomer_after = await recommend(client, "nobody")
        score_after = await client.post("/v1/score", json={"user_id": "ann", "item_ids": items[:2]})
        counted_after = await no_model_answers(client)

    assert alive.status_code == 200
    # Ready for a load balancer, and saying what it serves.
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "model_version": None, "serving": "trending"}

    # Trending as a user without state gets it: available items only, by popularity.
    everything = ids(trending)
    assert items[3] not in everything and set(everything) == set(items) - {items[3]}
    assert everything[:5] == ids(newcomer)
    for answer in (trending, newcomer, ann, shoes):
        assert answer.json()["model_version"] is None
        assert answer.json()["fallback"] == "trending"
        assert answer.json()["arm"] is None
    # The user's purchase and exclude removed, the filter applied.
    assert ids(ann) == [i for i in everything if i not in {items[0], items[1]}][:5]
    # The category's own popular items first (model_server/recommender.py `_pick`).
    assert set(ids(shoes)) == {i for n, i in enumerate(items) if n % 2 and n != 3}
    assert counted == 4

    # What needs the model says so, as before; /similar answers without vectors.
    assert score.status_code == 503 and score.json()["error"] == "no_model"
    assert score.headers["retry-after"] == "5"
    assert model.status_code == 503 and model.json()["error"] == "no_model"
    assert versions.status_code == 200 and versions.json()["served"] is None
    assert similar.status_code == 200, similar.text
    assert similar.json()["model_version"] is None
    assert {item["source"] for item in similar.json()["items"]} <= {"covis", "category", "trending"}
    assert items[0] not in ids(similar) and items[3] not in ids(similar)

    # The first version swapped in without a restart: answers come from the model.
    assert ready_after.json() == {"ready": True, "model_version": first.version, "serving": "model"}
    assert ann_after.json()["model_version"] == first.version
    assert ann_after.json()["fallback"] is None
    assert items[0] not in ids(ann_after) and len(ids(ann_after)) == 5
    assert score_after.status_code == 200 and score_after.json()["model_version"] == first.version
    # A newcomer's trending is the same items with the same scores, now named by version.
    assert newcomer_after.json()["model_version"] == first.version
    assert ids(newcomer_after) == ids(newcomer)
    before = [item["score"] for item in newcomer.json()["items"]]
    after = [item["score"] for item in newcomer_after.json()["items"]]
    assert after == pytest.approx(before, rel=1e-3)
    assert counted_after == counted


@pytest.mark.parametrize("when", ["at_start", "while_serving_trending"])
async def test_a_refused_first_version_leaves_the_server_on_trending(
    served: Served, tmp_path: Path, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = tmp_path / "registry-without-a-good-version"
    settings = waiting_settings(served, registry)
    items = await _crowd(served)

    def publish_broken() -> str:
        version = publish(served.models, registry).version
        spoil(registry, version, "truncated_onnx")
        return version

    bad = publish_broken() if when == "at_start" else None
    with caplog.at_level(logging.ERROR, logger="streamrec.loaded"):
        async with in_process(settings) as (client, _):
            if bad is None:
                bad = publish_broken()

            async def refused() -> bool:
                text = (await client.get("/metrics")).text
                return counter_total(text, "streamrec_model_swaps", outcome="refused") >= 1

            await wait_until_async(refused, 10)
            ready = await client.get("/readyz")
            answer = await recommend(client, "nobody")
            metrics = (await client.get("/metrics")).text

            good = publish(served.models, registry).version

            async def swapped() -> bool:
                ready: dict[str, object] = (await client.get("/readyz")).json()
                return ready["model_version"] == good

            await wait_until_async(swapped, 10)
            answer_after = await recommend(client, "nobody")
    assert ready.json() == {"ready": True, "model_version": None, "serving": "trending"}
    assert answer.json()["model_version"] is None and answer.json()["fallback"] == "trending"
    assert set(ids(answer)) <= set(items)
    assert counter_total(metrics, "streamrec_model_swaps", outcome="refused") == 1
    assert len([r for r in caplog.records if bad in r.getMessage()]) == 1
    assert answer_after.json()["model_version"] == good


async def test_redis_down_at_start_still_stops_the_server(served: Served, tmp_path: Path) -> None:
    settings = waiting_settings(served, tmp_path / "empty").model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0"}
    )
    with pytest.raises(StateError, match="does not answer"):
        async with in_process(settings):
            pass
