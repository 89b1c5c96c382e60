"""The item vocabulary: item id strings to embedding rows, and back.

Row 0 is padding. New ids are appended, so every old id keeps its row and a
warm-started model keeps its old embeddings. Stored as JSON, never pickled.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from streamrec.errors import BundleError


@dataclass(frozen=True)
class ItemVocab:
    item_ids: tuple[str, ...]  # row i + 1 holds item_ids[i]
    _rows: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows = {item_id: row for row, item_id in enumerate(self.item_ids, start=1)}
        if len(rows) != len(self.item_ids):
            raise ValueError("item ids in a vocabulary must be unique")
        object.__setattr__(self, "_rows", rows)

    @classmethod
    def build(cls, item_ids: Iterable[str]) -> ItemVocab:
        return cls(()).grow(item_ids)

    @property
    def n_rows(self) -> int:
        """Rows in an embedding table for this vocabulary, padding included."""
        return len(self.item_ids) + 1

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

    def row(self, item_id: str) -> int:
        """The embedding row of `item_id`, or 0 (padding) when unknown."""
        return self._rows.get(item_id, 0)

    def item_id(self, row: int) -> str:
        return self.item_ids[row - 1]

    def grow(self, item_ids: Iterable[str]) -> ItemVocab:
        """A vocabulary with unseen ids appended in first-seen order."""
        known = set(self._rows)
        added: list[str] = []
        for item_id in item_ids:
            if item_id not in known:
                known.add(item_id)
                added.append(item_id)
        return ItemVocab(self.item_ids + tuple(added))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"item_ids": list(self.item_ids)}), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ItemVocab:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            item_ids = body["item_ids"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}: expected a JSON vocabulary with 'item_ids': {exc}") from exc
        if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
            raise BundleError(f"{path}: 'item_ids' must be a list of strings")
        return cls(tuple(item_ids))
