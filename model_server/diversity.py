"""A diversity re-rank of a ranked answer: maximal marginal relevance (Carbonell and
Goldstein, 1998) over the item vectors of the served model.

Each next item is the one of the `pool` best ranked that maximises
(1 - weight) * relevance - weight * (its largest cosine similarity to the items
already chosen), relevance being the ranker's score rescaled to [0, 1] over the
pool. An item without a vector (one the model has not learned yet) is similar to
nothing. weight 0 keeps the ranker's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mmr_order(
    order: Sequence[int], scores: np.ndarray, vectors: np.ndarray, weight: float, pool: int
) -> list[int]:
    """`order` (candidate positions, best first) with its first `pool` re-ranked;
    `scores` and `vectors` (zeros for an item without one) by candidate position."""
    head, tail = list(order[:pool]), list(order[pool:])
    if weight <= 0 or len(head) < 2:
        return [*head, *tail]
    relevance = np.asarray(scores, dtype=np.float64)[head]
    spread = relevance.max() - relevance.min()
    relevance = (relevance - relevance.min()) / spread if spread > 0 else np.ones(len(head))
    unit = np.asarray(vectors, dtype=np.float64)[head]
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    unit = np.divide(unit, norms, out=np.zeros_like(unit), where=norms > 0)
    similarity = unit @ unit.T
    closest = np.full(len(head), -np.inf)  # to the chosen ones; none chosen yet
    left = np.ones(len(head), dtype=bool)
    chosen: list[int] = []
    for _ in range(len(head)):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        value = np.where(left, (1 - weight) * relevance - weight * penalty, -np.inf)
        best = int(np.argmax(value))
        chosen.append(head[best])
        left[best] = False
        closest = np.maximum(closest, similarity[best])
    return [*chosen, *tail]
