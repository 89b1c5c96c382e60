"""Per-request item filters and the per-category cap, applied to an answer's items in
order against the catalogue's records (docs/catalogue.md, "Filters").

An item the catalogue does not know has no category, price or attributes: it
passes `exclude_categories` and fails every filter that asks for a value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streamrec.catalogue import CatalogueItem
from streamrec.items import AttributeValue


@dataclass(frozen=True)
class ItemFilter:
    include_categories: frozenset[str] = frozenset()  # in at least one of them
    exclude_categories: frozenset[str] = frozenset()  # in none of them
    price_min: float | None = None
    price_max: float | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)  # all equal

    @property
    def active(self) -> bool:
        return bool(
            self.include_categories
            or self.exclude_categories
            or self.price_min is not None
            or self.price_max is not None
            or self.attributes
        )

    def admits(self, item: CatalogueItem | None) -> bool:
        categories = set(item.categories) if item is not None else set()
        if self.include_categories and not categories & self.include_categories:
            return False
        if categories & self.exclude_categories:
            return False
        if self.price_min is not None or self.price_max is not None:
            price = item.price if item is not None else None
            if price is None:
                return False
            if self.price_min is not None and price < self.price_min:
                return False
            if self.price_max is not None and price > self.price_max:
                return False
        if self.attributes:
            held = (item.attributes if item is not None else None) or {}
            for name, wanted in self.attributes.items():
                if not _equal(held.get(name), wanted):
                    return False
        return True


def _equal(value: AttributeValue | None, wanted: AttributeValue) -> bool:
    """Numbers by value (42 is 42.0); a boolean only to a boolean (JSON tells true
    from 1, so does the filter)."""
    if value is None:
        return False
    if isinstance(value, bool) or isinstance(wanted, bool):
        return type(value) is type(wanted) and value == wanted
    return value == wanted


NO_FILTER = ItemFilter()


def pick(
    item_ids: Sequence[str],
    record_of: Callable[[str], CatalogueItem | None],
    k: int,
    item_filter: ItemFilter,
    max_per_category: int = 0,
) -> list[int]:
    """Positions in `item_ids` (in order, each id once) of the first `k` items the
    filter admits, at most `max_per_category` (0: no cap) of any one category."""
    chosen: list[int] = []
    seen: set[str] = set()
    per_category: Counter[str] = Counter()
    for position, item_id in enumerate(item_ids):
        if len(chosen) == k:
            break
        if item_id in seen:
            continue
        seen.add(item_id)
        record = record_of(item_id)
        if not item_filter.admits(record):
            continue
        categories = record.categories if record is not None else ()
        if max_per_category and any(per_category[c] >= max_per_category for c in categories):
            continue
        per_category.update(categories)
        chosen.append(position)
    return chosen


def fill_sources(answer: Iterable[CatalogueItem | None], most: int = 4) -> list[str]:
    """The categories (at most `most`, the most frequent first) of what an answer
    holds: whose most popular items may fill it when the filter thinned it."""
    counts: Counter[str] = Counter()
    for record in answer:
        if record is not None:
            counts.update(record.categories)
    return [category for category, _ in counts.most_common(most)]
