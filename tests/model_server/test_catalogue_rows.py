"""The catalogue by a version's rows (model_server/catalogue_rows.py): the ranking
features it gives are the ones the per-candidate lookups give, bit for bit, and so
are the candidates it finds in a filter's categories, after the catalogue changes
(prices, categories, deletes), for items the version does not know, and after a
rebuild when the mirror no longer holds the changes since. Against a real Redis,
through the mirror a server runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from model_server import catalogue_mirror
from model_server.catalogue_mirror import CatalogueMirror
from model_server.catalogue_rows import CatalogueRows
from streamrec.catalogue import Catalogue
from streamrec.events import EventType
from streamrec.features import EVENT_TYPES, RecentEvent, UserState, ranking_features
from streamrec.items import ItemDelete, ItemRecord
from streamrec.settings import Settings

CATEGORIES = ["shoes", "hats", "bags", "belts"]


@pytest.fixture
async def catalogue(make_settings: Callable[..., Settings]) -> AsyncIterator[Catalogue]:
    opened = Catalogue(make_settings("catalogue-rows"))
    yield opened
    await opened.redis.flushdb()
    await opened.close()


def _records(rng: np.random.Generator, items: list[str], ts_ms: int) -> list[ItemRecord]:
    """Some items in one category, some in two (or the same one twice), some in
    none; some priced, some not."""
    records = []
    for item_id in items:
        picked = tuple(rng.choice(CATEGORIES, size=int(rng.integers(0, 3))).tolist())
        price = round(float(rng.uniform(1, 100)), 2) if rng.random() < 0.8 else None
        records.append(ItemRecord(item_id, ts_ms, categories=picked, price=price))
    return records


def _compare(mirror: CatalogueMirror, held: CatalogueRows, rows: dict[str, int]) -> None:
    """Both ways for users and candidates drawn from the vocabulary and beyond it."""
    rng = np.random.default_rng(7)
    known = list(rows)
    beyond = [f"new-{n}" for n in range(5)]  # in the catalogue, not in the version
    for case in range(40):
        recent = [
            RecentEvent(str(item_id), EventType.CLICK, step)
            for step, item_id in enumerate(rng.choice(known, size=int(rng.integers(1, 8))))
        ]
        user = UserState(recent, categories=mirror.categories_of, prices=mirror.prices_of)
        candidates = [str(i) for i in rng.choice(known + beyond + ["nowhere"], size=30)]
        vocab_rows = np.array([rows.get(i, 0) for i in candidates], dtype=np.int64)
        dots, popularity = rng.normal(size=30), np.zeros((30, len(EVENT_TYPES)))
        looked_up = ranking_features(candidates, dots, user, popularity, 9)
        gathered = ranking_features(
            candidates,
            dots,
            user,
            popularity,
            9,
            candidate_catalogue=held.candidates(vocab_rows, candidates),
        )
        assert np.array_equal(looked_up, gathered), f"case {case}"
        # What a filtered answer keeps of its candidates by their codes: the
        # candidates in one of the included categories, as the records say.
        included = {str(c) for c in rng.choice(CATEGORIES, size=int(rng.integers(1, 3)))}
        inside = held.within(vocab_rows, candidates, included).tolist()
        assert inside == [
            not included.isdisjoint(mirror.categories_of.get(i, ())) for i in candidates
        ], f"case {case}"


async def test_the_rows_give_the_lookups_features_as_the_catalogue_changes(
    catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    rows = {f"item-{n}": n + 1 for n in range(60)}
    await catalogue.apply_records_each(_records(rng, [*rows, *(f"new-{n}" for n in range(5))], 1))
    mirror = CatalogueMirror(catalogue, poll_s=0.05, max_lag_s=60.0, popular_refresh_s=60.0)
    await mirror.catch_up()
    held = CatalogueRows(mirror, rows, len(rows))
    _compare(mirror, held, rows)

    # Changes read on: new prices and categories, deletes, an item priced anew.
    changed = _records(rng, [f"item-{n}" for n in range(0, 60, 3)], 2)
    await catalogue.apply_records_each([*changed, ItemDelete("item-1", 2), ItemDelete("new-0", 2)])
    await mirror.catch_up()
    _compare(mirror, held, rows)
    assert held.prices[rows["item-1"]] == 0.0 and held.codes[rows["item-1"]] == 0

    # The mirror lets go of the changes since: the rows are rebuilt, not patched.
    monkeypatch.setattr(catalogue_mirror, "CHANGES_HELD", 3)
    seq = held.seq
    await catalogue.apply_records_each(_records(rng, [f"item-{n}" for n in range(1, 60, 2)], 3))
    await mirror.catch_up()
    assert mirror.changed_since(seq) is None
    _compare(mirror, held, rows)
