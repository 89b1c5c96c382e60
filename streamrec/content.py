"""An item's content as the models read it: its categories, title words, tags and
price, hashed into a fixed number of token ids. Training (retrain/encoder.py's
content tower) and serving (the live index of model_server/live_items.py) both
call `content_tokens`, so an item's tokens are the same on both sides.

Each token is `namespace:value` hashed (blake2b, stable across processes and
machines, unlike Python's `hash`) into 1 .. CONTENT_BUCKETS - 1; 0 is padding. The
namespaces keep a category "red" apart from the title word "red".
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Bump when tokens are made differently: a bundle records the version it was
# trained with, and a server adds live items only for a version it computes.
CONTENT_VERSION = 1
CONTENT_BUCKETS = 1 << 14
CONTENT_SLOTS = 16
MAX_TITLE_TOKENS = 8
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class ItemContent:
    """What the content tower reads of an item record (streamrec/items.py)."""

    categories: tuple[str, ...] = ()
    title: str | None = None
    price: float | None = None
    tags: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.categories or self.title or self.tags) and self.price is None


def price_bucket(price: float) -> int:
    """Half-octave buckets of the price: 10 and 13 apart, 10 and 10.5 together."""
    if not math.isfinite(price) or price <= 0:
        return -1
    return math.floor(2 * math.log2(price))


def _bucket(token: str) -> int:
    digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "big") % (CONTENT_BUCKETS - 1)


def content_tokens(content: ItemContent) -> np.ndarray:
    """(CONTENT_SLOTS,) int64 token ids, padded with 0: categories first, then the
    price bucket, tags and title words, each at most once, until the slots are full."""
    tokens = [f"c:{c}" for c in content.categories]
    if content.price is not None:
        tokens.append(f"p:{price_bucket(content.price)}")
    tokens += [f"g:{t.lower()}" for t in content.tags]
    if content.title:
        words = _WORD.findall(content.title.lower())[:MAX_TITLE_TOKENS]
        tokens += [f"t:{w}" for w in words]
    ids = list(dict.fromkeys(_bucket(t) for t in tokens))[:CONTENT_SLOTS]
    row = np.zeros(CONTENT_SLOTS, dtype=np.int64)
    row[: len(ids)] = ids
    return row


def content_matrix(
    item_ids: Sequence[str], contents: Mapping[str, ItemContent], first_row: int = 0
) -> np.ndarray:
    """(first_row + len(item_ids), CONTENT_SLOTS) token ids, row first_row + i for
    item_ids[i]; all 0 for an item without content (and for the first rows)."""
    matrix = np.zeros((first_row + len(item_ids), CONTENT_SLOTS), dtype=np.int64)
    for offset, item_id in enumerate(item_ids):
        content = contents.get(item_id)
        if content is not None and not content.empty:
            matrix[first_row + offset] = content_tokens(content)
    return matrix


def prices_of(content: Mapping[str, ItemContent]) -> dict[str, float]:
    """Each item's price, where its content has one (the ranker's price column)."""
    return {item: c.price for item, c in content.items() if c.price is not None and c.price > 0}


def from_categories(categories: Mapping[str, Iterable[str]]) -> dict[str, ItemContent]:
    """Content made of categories alone (a catalogue that holds nothing else)."""
    return {item: ItemContent(tuple(cats)) for item, cats in categories.items() if cats}
