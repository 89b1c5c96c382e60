"""Per-request item filters and the per-category cap, applied to an answer's items in
order against the catalogue's records (docs/catalogue.md, "Filters").

An item the catalogue does not know has no category, price or attributes: it
passes `exclude_categories` and fails every filter that asks for a value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

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
        categories = item.categories if item is not None else ()
        if self.include_categories and self.include_categories.isdisjoint(categories):
            return False
        if self.exclude_categories and not self.exclude_categories.isdisjoint(categories):
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


class Picker:
    """The first `k` available items the filter admits, each once, none of `removed`,
    at most `max_per_category` (0: no cap) of any one category, chosen from the
    items offered in order: a caller offers more only while the answer is short.
    Out of stock or deleted: never chosen (an item the catalogue lacks can be).
    `chosen` holds positions among every item offered so far, `offered` how many
    that is."""

    def __init__(
        self,
        record_of: Callable[[str], CatalogueItem | None],
        k: int,
        item_filter: ItemFilter,
        max_per_category: int = 0,
        removed: Iterable[str] = (),
        categories_of: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.record_of = record_of
        self.k = k
        # With the catalogue's categories per item (the records' own) and categories
        # to include, an offer first drops the items in none of them in one pass:
        # few of a few hundred candidates are, and checking each whole cost 3x as much.
        # What passed that pass is checked against the rest of the filter only.
        self._include = item_filter.include_categories if categories_of is not None else None
        self._categories_of = categories_of or {}
        rest = (
            replace(item_filter, include_categories=frozenset()) if self._include else item_filter
        )
        self._admits = rest.admits if rest.active else None
        self.max_per_category = max_per_category
        self.chosen: list[int] = []
        self.offered = 0
        self._seen: set[str] = set(removed)
        self._per_category: dict[str, int] = {}

    @property
    def full(self) -> bool:
        return len(self.chosen) >= self.k

    def offer(
        self, item_ids: Sequence[str], within: str | None = None, included: bool = False
    ) -> None:
        """Choose from `item_ids` while the answer is short. `within`: every item is in
        that category (its most popular list): the include pass is skipped when it
        is included, and the list is left once the cap fills it (what follows
        would each be turned away). `included`: every item is known to be in an
        included category (the include pass is skipped)."""
        # Everything the loop reads held in locals, plain loops, the per-category cap
        # before the filter: it runs for every candidate of a filtered answer (a few
        # hundred, most of them turned away by the cap once a category is full), and
        # attribute lookups, generators and calls were most of it (docs/decisions.md).
        cap, k, chosen, seen = self.max_per_category, self.k, self.chosen, self._seen
        record_of, admits, counts = self.record_of, self._admits, self._per_category
        start = self.offered
        self.offered += len(item_ids)
        if within is not None and cap and counts.get(within, 0) >= cap:
            return
        offered: Iterable[tuple[int, str]] = enumerate(item_ids)
        if self._include and not included and (within is None or within not in self._include):
            include, listed = self._include, self._categories_of.get
            offered = [
                (at, i) for at, i in enumerate(item_ids) if not include.isdisjoint(listed(i, ()))
            ]
        for at, item_id in offered:
            if len(chosen) >= k:
                break
            if item_id in seen:
                continue
            seen.add(item_id)
            record = record_of(item_id)
            if record is None:
                # Unknown to the catalogue: no category to cap, no value to filter on.
                if admits is not None and not admits(None):
                    continue
            elif not record.available:
                continue
            elif cap:
                categories = record.categories
                if len(categories) == 1:  # most items: no call
                    if counts.get(categories[0], 0) >= cap:
                        continue
                elif _any_full(categories, counts, cap):
                    continue
                if admits is not None and not admits(record):
                    continue
                for category in categories:
                    counts[category] = counts.get(category, 0) + 1
                if within is not None and counts.get(within, 0) >= cap:
                    chosen.append(start + at)
                    break
            elif admits is not None and not admits(record):
                continue
            chosen.append(start + at)


def _any_full(categories: tuple[str, ...], counts: dict[str, int], cap: int) -> bool:
    """Whether any of `categories` holds `cap` chosen items (a loop: `any()` over a
    generator costs a few times as much, once per item offered)."""
    for category in categories:  # noqa: SIM110
        if counts.get(category, 0) >= cap:
            return True
    return False


def pick(
    item_ids: Sequence[str],
    record_of: Callable[[str], CatalogueItem | None],
    k: int,
    item_filter: ItemFilter,
    max_per_category: int = 0,
) -> list[int]:
    """Positions in `item_ids` (in order, each id once) of the first `k` available
    items the filter admits, at most `max_per_category` (0: no cap) of a category."""
    picker = Picker(record_of, k, item_filter, max_per_category)
    picker.offer(item_ids)
    return picker.chosen


def fill_sources(answer: Iterable[CatalogueItem | None], most: int = 4) -> list[str]:
    """The categories (at most `most`, the most frequent first) of what an answer
    holds: whose most popular items may fill it when the filter thinned it."""
    counts: Counter[str] = Counter()
    for record in answer:
        if record is not None:
            counts.update(record.categories)
    return [category for category, _ in counts.most_common(most)]
