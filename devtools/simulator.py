"""A small simulator of shoppers with tastes: the demo's own sample (synthetic).

Real logs cannot ship with the project, so the demo generates events: each user
prefers one or two categories, browses mostly inside them in short sessions,
adds some items to the cart and buys some of those. Deterministic per seed.
`simulate_catalogue` gives the same shop's catalogue records (docs/catalogue.md).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

from streamrec.events import Event, EventType
from streamrec.items import ItemRecord

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Catalogue:
    items_by_category: dict[str, list[str]]

    @property
    def categories(self) -> list[str]:
        return list(self.items_by_category)


def make_catalogue(rng: random.Random, n_items: int, n_categories: int) -> Catalogue:
    categories = [f"c{c:02d}" for c in range(n_categories)]
    items: dict[str, list[str]] = {c: [] for c in categories}
    for i in range(n_items):
        items[categories[i % n_categories]].append(f"i{i:04d}")
    return Catalogue(items)


def simulate(
    n_users: int = 60,
    n_items: int = 300,
    n_categories: int = 8,
    n_events: int = 3000,
    seed: int = 7,
    start_ms: int = START_MS,
    run_id: str = "",
) -> Iterator[Event]:
    """Events in time order; item popularity inside a category is Zipf-like.
    `run_id` goes into every event id, so a second run is new events, not duplicates."""
    rng = random.Random(seed)
    catalogue = make_catalogue(rng, n_items, n_categories)
    tastes = {
        f"u{u:03d}": rng.sample(catalogue.categories, k=rng.choice((1, 2))) for u in range(n_users)
    }
    users = list(tastes)
    now_ms = start_ms
    produced = 0
    while produced < n_events:
        user = rng.choice(users)
        session = f"s{produced}"
        for _ in range(rng.randint(2, 8)):
            if produced >= n_events:
                return
            category = (
                rng.choice(tastes[user])
                if rng.random() < 0.85
                else rng.choice(catalogue.categories)
            )
            shelf = catalogue.items_by_category[category]
            item = shelf[min(int(rng.paretovariate(1.2)) - 1, len(shelf) - 1)]
            now_ms += rng.randint(50, 2000)
            kind = EventType.CLICK
            roll = rng.random()
            if roll < 0.04:
                kind = EventType.PURCHASE
            elif roll < 0.10:
                kind = EventType.ADD_TO_CART
            context = {"source": "synthetic", "category": category}
            yield Event(
                event_id=f"sim-{run_id}{seed}-{produced}",
                user_id=user,
                item_id=item,
                type=kind,
                ts_ms=now_ms,
                session_id=session,
                context=context,
                price=round(rng.uniform(5, 200), 2) if kind is EventType.PURCHASE else None,
                quantity=1.0 if kind is EventType.PURCHASE else None,
            )
            produced += 1


# The simulated shop's words for titles: one noun per category (cycled), styles as tags.
CATEGORY_NOUNS = ("shoe", "jacket", "lamp", "mug", "book", "headphones", "backpack", "watch")
STYLES = ("classic", "light", "pro", "everyday", "compact", "vintage", "eco", "deluxe")


def simulate_catalogue(
    n_items: int = 300,
    n_categories: int = 8,
    seed: int = 7,
    start_ms: int = START_MS,
    until_ms: int | None = None,
) -> list[ItemRecord]:
    """The catalogue records of `simulate`'s shop, in time order: every item at
    `start_ms` in its category with a title, a price and a style tag; about one
    item in twenty out of stock for a while (a record with `available: false`,
    later one restocking it, unless that falls past `until_ms`); and `n_items // 10`
    new arrivals between `start_ms` and `until_ms`, items no simulated shopper has
    touched yet (ids after the simulated ones). Deterministic per seed."""
    until_ms = until_ms if until_ms is not None else start_ms + 3_600_000
    rng = random.Random(f"catalogue-{seed}")
    catalogue = make_catalogue(rng, n_items, n_categories)

    def described(item: str, category: str, ts_ms: int) -> ItemRecord:
        index = int(category[1:])
        style = STYLES[int(item[1:]) % len(STYLES)]
        return ItemRecord(
            item,
            ts_ms,
            categories=(category,),
            title=f"{style} {CATEGORY_NOUNS[index % len(CATEGORY_NOUNS)]} {item}",
            price=round(rng.uniform(5, 50) * (1 + index % 4), 2),
            tags=(style,),
        )

    records = [
        described(item, category, start_ms)
        for category, items in catalogue.items_by_category.items()
        for item in items
    ]
    span_ms = max(1, until_ms - start_ms)
    for record in rng.sample(records, k=max(1, len(records) // 20)):
        out_ms = start_ms + rng.randint(1, span_ms)
        back_ms = out_ms + rng.randint(span_ms // 10, span_ms // 3 + 1)
        records.append(replace(record, ts_ms=out_ms, available=False))
        if back_ms <= until_ms:
            records.append(replace(record, ts_ms=back_ms))
    for n in range(n_items // 10):
        item, category = f"i{n_items + n:04d}", catalogue.categories[n % n_categories]
        records.append(described(item, category, start_ms + rng.randint(1, span_ms)))
    return sorted(records, key=lambda r: r.ts_ms)
