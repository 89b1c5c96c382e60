"""Trending answers hold only items the serving model knows, whatever ids producers
put at the top of the trending sets (control characters and NUL included)."""

from __future__ import annotations

import pytest

from bench.scenarios.users import apply, events_for
from model_server.trending import TrendingReader
from streamrec.catalogue import Catalogue
from streamrec.items import ItemRecord
from streamrec.loaded import open_model
from streamrec.state import StateStore
from tests.model_server.conftest import Served, in_process

pytestmark = pytest.mark.integration

HOSTILE_IDS = ["\x00", "nul\x00inside", "\x1b[31mred", "tab\there", "new-item"]


async def test_trending_serves_only_items_the_model_knows(served: Served) -> None:
    known = served.items[:3]
    # Far more unknown ids than a first read of the trending sets returns, each
    # clicked more often than any known item.
    unknown = HOSTILE_IDS + [f"flood-{n}" for n in range(300)]
    await apply(served.settings, events_for("producer", [i for i in unknown for _ in range(5)]))
    await apply(served.settings, events_for("others", [known[0]] * 4 + [known[1]] * 3))
    await apply(served.settings, events_for("more", [known[2]] * 2))
    await apply(served.settings, events_for("reader", served.items[10:14], start=10))
    vocab = set(served.items)
    async with in_process(served.settings) as (client, _):
        newcomer = (await client.post("/recommend", json={"user_id": "nobody", "k": 3})).json()
        every = (await client.post("/recommend", json={"user_id": "reader", "k": 200})).json()
        # The filters leave nothing of the ranked candidates: trending fills the answer.
        ranked = [item["item_id"] for item in every["items"]]
        filled = (
            await client.post(
                "/recommend", json={"user_id": "reader", "k": 3, "exclude": ranked[:1000]}
            )
        ).json()
    assert newcomer["fallback"] == "trending"
    assert [item["item_id"] for item in newcomer["items"]] == known
    assert all(item["item_id"] in vocab for item in filled["items"]), filled


async def test_an_item_out_of_stock_leaves_trending_and_comes_back(served: Served) -> None:
    """The catalogue decides what trending may show: an item marked unavailable
    leaves the answer at the next trending read, and returns when it is back."""
    top = served.items[20]
    await apply(served.settings, events_for("crowd", [top] * 50))
    catalogue = Catalogue(served.settings)
    try:

        async def newcomer() -> list[str]:
            async with in_process(served.settings) as (client, _):
                answer = await client.post("/recommend", json={"user_id": "new", "k": 5})
            return [item["item_id"] for item in answer.json()["items"]]

        assert (await newcomer())[0] == top
        await catalogue.apply_records_each([ItemRecord(top, 1_000, available=False)])
        assert top not in await newcomer()
        await catalogue.apply_records_each([ItemRecord(top, 2_000, available=True)])
        assert (await newcomer())[0] == top
    finally:
        await catalogue.close()


async def test_a_trending_read_serves_requests_that_want_a_few_more_items(served: Served) -> None:
    """Answers want k plus what they remove (their purchases, `exclude`): a read is
    taken to the next power of two and held, so one that wants a few more than the
    last does not read Redis again within the refresh."""
    await apply(served.settings, events_for("crowd", served.items[:40]))
    store = StateStore(served.settings)
    try:
        reader = TrendingReader(store, served.settings.trending_max_items)
        model = open_model(served.root, served.first.version)
        await reader.read(model, 100, max_age_s=60)
        assert reader.recent(model, 120, max_age_s=60) is not None  # 128 read
        assert reader.recent(model, 129, max_age_s=60) is None
    finally:
        await store.close()
