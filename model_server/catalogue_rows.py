"""The catalogue's prices and categories by one version's vocabulary rows, so that a
ranked request takes its candidates' (a few hundred) in two array gathers instead
of two dictionary lookups each (`features.CandidateCatalogue`; the lookups were a
third of the ranking features' CPU: docs/decisions.md).

Built from the process's catalogue mirror (model_server/catalogue_mirror.py) for a
version before it serves, and brought up to the mirror's latest change at each
request from the mirror's list of changed items (a handful per poll); a rebuild
only when the mirror no longer holds the changes since (or on first use). An item
the version does not know (row 0: a new item in the live index, say) is looked up
in the mirror as before. Each distinct set of categories gets a code the first time
it is seen; the codes grow with the catalogue's distinct sets, never with requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from model_server.catalogue_mirror import CatalogueMirror
from streamrec.features import CandidateCatalogue

NOT_BUILT = -1


class CatalogueRows:
    def __init__(self, mirror: CatalogueMirror, rows: Mapping[str, int], n_rows: int) -> None:
        self.mirror = mirror
        self.rows = rows
        self.prices = np.zeros(n_rows + 1, dtype=np.float64)  # row 0: no item
        self.codes = np.zeros(n_rows + 1, dtype=np.int64)
        self._code_of: dict[tuple[str, ...], int] = {(): 0}
        self.coded: dict[str, list[int]] = {}  # category -> the codes holding it
        self.seq = NOT_BUILT  # the mirror's change these reflect

    def candidates(self, vocab_rows: np.ndarray, item_ids: Sequence[str]) -> CandidateCatalogue:
        """The prices and category codes of these candidates (`vocab_rows` in the
        same order; 0 where the version lacks the item), as the mirror holds them now."""
        prices, codes = self._gathered(vocab_rows, item_ids)
        return CandidateCatalogue(prices, codes, self.coded, len(self._code_of))

    def within(
        self, vocab_rows: np.ndarray, item_ids: Sequence[str], categories: Iterable[str]
    ) -> np.ndarray:
        """Per candidate (as `candidates` takes them), whether it is in at least one
        of `categories`: a lookup by code (`np.isin` sorts, and cost 3x as much)."""
        _, codes = self._gathered(vocab_rows, item_ids)  # brought current first
        wanted = np.zeros(len(self._code_of), dtype=bool)
        for category in categories:
            wanted[self.coded.get(category, [])] = True
        inside: np.ndarray = wanted[codes]
        return inside

    def _gathered(
        self, vocab_rows: np.ndarray, item_ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The candidates' prices and category codes, current with the mirror."""
        self.current()
        prices = self.prices[vocab_rows]
        codes = self.codes[vocab_rows]
        for n in np.flatnonzero(vocab_rows == 0).tolist():
            prices[n], codes[n] = self._attributes(item_ids[n])
        return prices, codes

    def current(self) -> None:
        """Bring the rows up to the mirror's latest change."""
        mirror = self.mirror
        if self.seq == mirror.seq:
            return
        changed: Iterable[str] | None = (
            None if self.seq == NOT_BUILT else mirror.changed_since(self.seq)
        )
        if changed is None:
            self.prices[:] = 0.0
            self.codes[:] = 0
            changed = mirror.prices_of.keys() | mirror.categories_of.keys()  # each once
        rows = self.rows
        for item_id in changed:
            row = rows.get(item_id, 0)
            if row:
                self.prices[row], self.codes[row] = self._attributes(item_id)
        self.seq = mirror.seq

    def _attributes(self, item_id: str) -> tuple[float, int]:
        """The item's price (0: none) and category code from the mirror."""
        categories = tuple(self.mirror.categories_of.get(item_id, ()))
        code = self._code_of.get(categories)
        if code is None:
            code = len(self._code_of)
            self._code_of[categories] = code
            for category in dict.fromkeys(categories):
                self.coded.setdefault(category, []).append(code)
        return self.mirror.prices_of.get(item_id, 0.0), code
