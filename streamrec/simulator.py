"""A small simulator of shoppers with tastes: the demo's own sample (synthetic).

Real logs cannot ship with the project, so the demo generates events: each user
prefers one or two categories, browses mostly inside them in short sessions,
adds some items to the cart and buys some of those. Deterministic per seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from streamrec.events import Event, EventType

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
