"""POST /similar against real Redis and a real bundle: co-visitation first (fresh
the moment events land), then the model's vector neighbours, the item's category,
trending; the catalogue's availability and the request's filters hold throughout."""

from __future__ import annotations

from typing import Any

from bench.scenarios.users import apply, events_for
from devtools.processes import ServiceProcess
from streamrec.catalogue import Catalogue
from streamrec.client import AsyncRecommenderClient
from streamrec.items import ItemRecord
from tests.model_server.conftest import Served, in_process


async def test_similar_items_come_from_links_vectors_categories_then_trending(
    served: Served,
) -> None:
    anchor, after, gone, brand_new = served.items[10], served.items[11], served.items[12], "nv-1"
    # Three users go anchor -> after; one anchor -> gone; two anchor -> a new item.
    for n in range(3):
        await apply(served.settings, events_for(f"a{n}", [anchor, after]))
    await apply(served.settings, events_for("g", [anchor, gone]))
    for n in range(2):
        await apply(served.settings, events_for(f"n{n}", [anchor, brand_new]))
    await apply(served.settings, events_for("crowd", served.items[100:140]))
    catalogue = Catalogue(served.settings)
    try:
        await catalogue.apply_records_each(
            [
                ItemRecord(anchor, 1, categories=("shoes",)),
                ItemRecord(after, 1, categories=("shoes",)),
                ItemRecord(gone, 1, available=False, categories=("shoes",)),
                ItemRecord(brand_new, 1, categories=("hats",)),
            ]
        )
    finally:
        await catalogue.close()
    async with in_process(served.settings) as (client, _):

        async def similar(**body: object) -> dict[str, Any]:
            response = await client.post("/similar", json={"item_id": anchor, **body})
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

        plain = await similar(k=30)
        shoes = await similar(k=5, filter={"include_categories": ["shoes"]})
        stranger = await client.post("/similar", json={"item_id": "never-seen", "k": 5})
        bad = await client.post("/similar", json={"item_id": "", "k": 5})
    ids = [item["item_id"] for item in plain["items"]]
    sources = [item["source"] for item in plain["items"]]
    # The links, strongest first: `after` (3 users) then the new item (2), which the
    # model has never seen; `gone` is out of stock; the item itself never.
    assert ids[:2] == [after, brand_new] and sources[:2] == ["covis", "covis"]
    assert gone not in ids and anchor not in ids
    assert "vector" in sources and sources.index("vector") > 1
    assert len(ids) == 30 and plain["short"] is False
    assert plain["model_version"] == served.first.version
    assert [i["item_id"] for i in shoes["items"]] == [after] and shoes["short"] is True
    assert stranger.status_code == 200
    assert {i["source"] for i in stranger.json()["items"]} == {"trending"}
    assert bad.status_code == 422


async def test_the_client_asks_for_similar_items(
    served: Served, server_process: ServiceProcess
) -> None:
    await apply(served.settings, events_for("u", served.items[:3]))
    url = f"http://127.0.0.1:{served.settings.serve_port}"
    async with AsyncRecommenderClient(url) as client:
        answer = await client.similar(served.items[0], k=4)
    assert answer.item_ids[0] == served.items[1] and answer.items[0].source == "covis"
    assert len(answer.items) == 4 and served.items[0] not in answer.item_ids
