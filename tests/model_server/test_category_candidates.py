"""The catalogue's categories in /recommend and /score: the most popular available
items of the user's latest item's category join the candidates, an item the model
never saw among them; a version trained without a catalogue reads none of it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.scenarios.models import publish
from bench.scenarios.users import apply, events_for
from streamrec.catalogue import Catalogue
from streamrec.items import ItemRecord
from tests.model_server.conftest import Served, in_process, wait_until_async


async def _shop(served: Served) -> str:
    """A catalogue where the user's latest item is a shoe; two shoes the model never
    saw are popular with other users (one then sold out); returns the user."""
    latest = served.items[3]
    catalogue = Catalogue(served.settings)
    try:
        await catalogue.apply_records_each(
            [
                ItemRecord(latest, 1, categories=("shoes",)),
                ItemRecord("new-shoe", 1, categories=("shoes",)),
                ItemRecord("sold-out-shoe", 1, categories=("shoes",)),
            ]
        )
        await apply(served.settings, events_for("shopper", served.items[:4]))
        for n in range(3):
            await apply(served.settings, events_for(f"fan{n}", ["new-shoe", "sold-out-shoe"]))
        await catalogue.apply_records_each(
            [ItemRecord("sold-out-shoe", 2, available=False, categories=("shoes",))]
        )
    finally:
        await catalogue.close()
    return "shopper"


@pytest.mark.parametrize("with_catalogue", [True, False])
async def test_popular_items_of_the_latest_items_category_join_the_candidates(
    served: Served, with_catalogue: bool
) -> None:
    models = served.models
    if with_catalogue:
        models = replace(models, data_window={**models.data_window, "items_with_category": 1})
    manifest = publish(models, served.root, parent=served.first.version)
    assert (manifest.category_candidates > 0) is with_catalogue
    user = await _shop(served)
    async with in_process(served.settings) as (client, _):
        answer = (
            await client.post("/recommend", json={"user_id": user, "k": 200, "explain": True})
        ).json()
        scored = (
            await client.post("/score", json={"user_id": user, "item_ids": [served.items[5]]})
        ).json()
    assert answer.get("model_version") == manifest.version, answer
    by_id = {item["item_id"]: item for item in answer["items"]}
    assert "sold-out-shoe" not in by_id
    assert ("new-shoe" in by_id) is with_catalogue
    if with_catalogue:
        explained = by_id["new-shoe"]["features"]
        assert explained["category_rank_inv"] > 0 and explained["category_share"] == 0.25
        assert explained["in_model"] == 0
    else:
        assert all(not item["features"]["category_share"] for item in answer["items"])
    assert scored["items"][0]["score"] is not None


async def test_an_unavailable_item_leaves_the_ranked_answer_and_comes_back(
    served: Served,
) -> None:
    """Own items, retrieved ones and co-visited ones alike: the catalogue's word
    reaches every ranked answer as soon as the server's mirror of the catalogue
    reads it (model_server/catalogue_mirror.py), with no retrain."""
    await apply(served.settings, events_for("returning", served.items[:4]))
    # Others' events: trending then has enough to fill what the filter removes.
    await apply(served.settings, events_for("crowd", served.items[100:160]))
    catalogue = Catalogue(served.settings)

    async def ids() -> list[str]:
        body = (await client.post("/recommend", json={"user_id": "returning", "k": 30})).json()
        assert body["fallback"] is None, body
        return [item["item_id"] for item in body["items"]]

    try:
        # The shop has a catalogue (without one, serving reads none: docs/serving.md).
        await catalogue.apply_records_each([ItemRecord("some-other-item", 1)])
        async with in_process(served.settings) as (client, _):
            before = await ids()
            own, top = served.items[2], next(i for i in before if i not in served.items[:4])
            assert own in before
            hidden: list[str] = []
            back: list[str] = []

            async def hidden_now() -> bool:
                nonlocal hidden
                hidden = await ids()
                return own not in hidden and top not in hidden

            async def back_now() -> bool:
                nonlocal back
                back = await ids()
                return back == before

            await catalogue.apply_records_each(
                [ItemRecord(own, 1, available=False), ItemRecord(top, 1, available=False)]
            )
            await wait_until_async(hidden_now, 2.0)
            await catalogue.apply_records_each([ItemRecord(own, 2), ItemRecord(top, 2)])
            await wait_until_async(back_now, 2.0)
            scored = await client.post("/score", json={"user_id": "returning", "item_ids": [own]})
    finally:
        await catalogue.close()
    assert own not in hidden and top not in hidden
    assert len(hidden) == 30  # topped up
    assert back == before
    assert scored.json()["items"][0]["score"] is not None
