"""Per-request catalogue filters and the per-category cap on /recommend, against a
real Redis catalogue: what the filter admits, what fills an answer the filter thinned,
what the answer says when nothing can, and the filter's rules on hand-made records."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.scenarios.users import apply, events_for
from model_server.filters import ItemFilter, Picker, pick
from streamrec.catalogue import Catalogue, CatalogueItem
from streamrec.items import AttributeValue, ItemRecord
from tests.model_server.conftest import Served, in_process


def record(
    item_id: str, *categories: str, price: float | None = None, **attributes: AttributeValue
) -> CatalogueItem:
    return CatalogueItem(
        item_id, 1, True, categories, price=price, attributes=dict(attributes) or None
    )


def test_the_filter_rules_on_records() -> None:
    records = {
        "boot": record("boot", "shoes", price=80.0, brand="acme", waterproof=True, size=42),
        "sandal": record("sandal", "shoes", "sale", price=20.0, brand="zed"),
        "hat": record("hat", "hats", price=15.0),
    }
    ids = ["boot", "sandal", "hat", "unknown"]

    def chosen(item_filter: ItemFilter, k: int = 10, cap: int = 0) -> list[str]:
        return [ids[p] for p in pick(ids, records.get, k, item_filter, cap)]

    assert chosen(ItemFilter()) == ids
    assert chosen(ItemFilter(include_categories=frozenset({"shoes"}))) == ["boot", "sandal"]
    # An item the catalogue lacks passes an exclusion and nothing that asks for a value.
    assert chosen(ItemFilter(exclude_categories=frozenset({"sale", "hats"}))) == [
        "boot",
        "unknown",
    ]
    assert chosen(ItemFilter(price_min=15, price_max=20)) == ["sandal", "hat"]
    assert chosen(ItemFilter(attributes={"size": 42.0, "waterproof": True})) == ["boot"]
    assert chosen(ItemFilter(attributes={"waterproof": 1})) == []  # true is not 1
    assert chosen(ItemFilter(), cap=1) == ["boot", "hat", "unknown"]  # sandal: 2nd shoe
    assert chosen(ItemFilter(), k=2) == ["boot", "sandal"]


async def _catalogue(served: Served) -> dict[str, str]:
    """Half the model's items are shoes (price 10 + n), the rest hats; one shoe is
    out of stock. The user looked at four of them; others at many."""
    items = served.items[:200]
    kinds = {item: ("shoes" if n % 2 else "hats") for n, item in enumerate(items)}
    catalogue = Catalogue(served.settings)
    try:
        await catalogue.apply_records_each(
            [
                ItemRecord(item, 1, categories=(kind,), price=10.0 + n, attributes={"n": n})
                for n, (item, kind) in enumerate(kinds.items())
            ]
        )
        await catalogue.apply_records_each(
            [ItemRecord(items[1], 2, available=False, categories=("shoes",))]
        )
    finally:
        await catalogue.close()
    await apply(served.settings, events_for("browser", items[:4]))
    await apply(served.settings, events_for("crowd", items[4:200]))
    return kinds


@pytest.mark.parametrize("user", ["browser", "newcomer"])
async def test_filters_and_the_cap_hold_on_ranked_and_trending_answers(
    served: Served, user: str
) -> None:
    kinds = await _catalogue(served)
    asked: dict[str, dict[str, Any]] = {
        "plain": {},
        "shoes": {"filter": {"include_categories": ["shoes"]}},
        "cheap_hats": {"filter": {"exclude_categories": ["shoes"], "price_max": 60}},
        "capped": {"max_per_category": 3},
        "none": {"filter": {"include_categories": ["no-such-category"]}},
        "one": {"filter": {"attributes": {"n": 7}}},
    }
    answers: dict[str, dict[str, Any]] = {}
    async with in_process(served.settings) as (client, _):
        for name, body in asked.items():
            response = await client.post("/recommend", json={"user_id": user, "k": 10, **body})
            assert response.status_code == 200, response.text
            answers[name] = response.json()
    ids = {name: [i["item_id"] for i in answer["items"]] for name, answer in answers.items()}
    assert answers["plain"]["fallback"] == (None if user == "browser" else "trending")
    assert len(ids["shoes"]) == 10 and all(kinds[i] == "shoes" for i in ids["shoes"])
    assert served.items[1] not in ids["shoes"]  # out of stock
    assert len(ids["cheap_hats"]) == 10
    assert all(kinds[i] == "hats" and served.items.index(i) <= 50 for i in ids["cheap_hats"])
    capped = [kinds.get(i) for i in ids["capped"]]
    assert capped.count("shoes") <= 3 and capped.count("hats") <= 3
    # Items the catalogue lacks have no category to cap; a newcomer sees none of them.
    assert len(capped) == (10 if user == "browser" else 6)
    assert answers["capped"]["short"] is (user != "browser")
    assert ids["none"] == [] and answers["none"]["short"] is True
    assert answers["plain"]["short"] is False
    assert ids["one"] == [served.items[7]] and answers["one"]["short"] is True


async def test_a_filtered_answer_is_a_503_when_the_catalogue_cannot_answer(
    served: Served,
) -> None:
    from bench.scenarios.redis_freeze import frozen_redis

    await _catalogue(served)
    async with in_process(served.settings) as (client, _):
        assert (await client.post("/recommend", json={"user_id": "browser"})).status_code == 200
        with frozen_redis(served.settings, at_most_s=4.0):
            response = await client.post(
                "/recommend",
                json={"user_id": "browser", "filter": {"include_categories": ["shoes"]}},
            )
    assert response.status_code == 503, response.text


CATEGORIES = ("a", "b", "c", "d")


@st.composite
def picking(draw: st.DrawFn) -> tuple[dict[str, CatalogueItem], ItemFilter, int, int, set[str]]:
    ids = [f"i{n}" for n in range(draw(st.integers(1, 30)))]
    records = {
        item: CatalogueItem(
            item,
            1,
            draw(st.booleans()),
            tuple(draw(st.lists(st.sampled_from(CATEGORIES), max_size=2, unique=True))),
            price=draw(st.none() | st.floats(0, 100)),
        )
        for item in ids
        if draw(st.integers(0, 9))  # a tenth the catalogue lacks
    }
    include = frozenset(draw(st.lists(st.sampled_from(CATEGORIES), max_size=2)))
    exclude = frozenset(draw(st.lists(st.sampled_from(CATEGORIES), max_size=1)))
    price_max = draw(st.none() | st.floats(0, 100))
    item_filter = ItemFilter(
        include_categories=include, exclude_categories=exclude, price_max=price_max
    )
    removed = set(draw(st.lists(st.sampled_from(ids), max_size=3)))
    return records, item_filter, draw(st.integers(1, 12)), draw(st.integers(0, 3)), removed


@given(picking(), st.data())
def test_the_picker_chooses_as_one_pass_over_every_offer_would(
    case: tuple[dict[str, CatalogueItem], ItemFilter, int, int, set[str]], data: st.DataObject
) -> None:
    """Offers split in turns, categories' own lists offered as such (the include pass
    skipped, the list left once its category is full), candidates known to be
    included offered as such: the same items as a plain check of each offered item
    in order against every rule."""
    records, item_filter, k, cap, removed = case
    ids = [f"i{n}" for n in range(40)]
    offers: list[tuple[list[str], str | None, bool]] = [
        (data.draw(st.lists(st.sampled_from(ids), max_size=20)), None, False)
    ]
    # Ranked candidates already cut to the included categories (by their codes).
    inside = [
        i for i, r in records.items() if not item_filter.include_categories.isdisjoint(r.categories)
    ]
    if item_filter.include_categories:
        offers.append(
            (
                data.draw(st.lists(st.sampled_from(inside), max_size=10)) if inside else [],
                None,
                True,
            )
        )
    for category in data.draw(st.lists(st.sampled_from(CATEGORIES), max_size=3)):
        listed = [i for i, r in records.items() if category in r.categories]
        offers.append((data.draw(st.permutations(listed)), category, False))
    categories_of = {i: r.categories for i, r in records.items() if r.categories}
    picker = Picker(records.get, k, item_filter, cap, removed, categories_of)
    for offered, within, included in offers:
        picker.offer(offered, within, included)
    every = [i for offered, _, _ in offers for i in offered]

    expected: list[int] = []
    seen, counts = set(removed), dict[str, int]()
    for position, item in enumerate(every):
        record = records.get(item)
        if len(expected) == k or item in seen:
            continue
        seen.add(item)
        if (record is not None and not record.available) or not item_filter.admits(record):
            continue
        categories = record.categories if record is not None else ()
        if cap and any(counts.get(c, 0) >= cap for c in categories):
            continue
        for c in categories:
            counts[c] = counts.get(c, 0) + 1
        expected.append(position)
    assert picker.chosen == expected
    assert picker.offered == len(every)
