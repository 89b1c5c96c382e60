"""Reference models under the same harness: popularity and item-kNN (cosine
co-occurrence of items within the same session, scored from the last item)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from retrain.data import NextItemCases, UserSequence


def popularity_ranks(train: Sequence[UserSequence], cases: NextItemCases) -> np.ndarray:
    counts = Counter(item for sequence in train for item in sequence.item_ids)
    n_items = len(counts)
    ordered = sorted(counts.values(), reverse=True)
    # Rank of an item = items at least as popular (ties count against it).
    at_least = {
        count: int(np.searchsorted(-np.array(ordered), -count, side="right"))
        for count in set(ordered)
    }
    return np.array(
        [at_least[counts[t]] if t in counts else n_items + 1 for t in cases.targets], dtype=np.int64
    )


def item_knn_ranks(train: Sequence[UserSequence], cases: NextItemCases) -> np.ndarray:
    sessions_with: Counter[str] = Counter()
    together: dict[str, Counter[str]] = defaultdict(Counter)
    for sequence in train:
        items = set(sequence.item_ids)
        sessions_with.update(items)
        for item in items:
            for other in items:
                if other != item:
                    together[item][other] += 1
    n_items = len(sessions_with)
    ranks = np.full(len(cases.targets), n_items + 1, dtype=np.int64)
    for case, (prefix, target) in enumerate(zip(cases.prefixes, cases.targets, strict=True)):
        last = prefix.item_ids[-1]
        neighbours = together.get(last)
        if not neighbours or target not in neighbours:
            continue
        norm = sessions_with[last]
        scores = {j: c / math.sqrt(norm * sessions_with[j]) for j, c in neighbours.items()}
        target_score = scores[target]
        ranks[case] = sum(1 for s in scores.values() if s >= target_score)
    return ranks
