"""Scoring held-out next-item cases with the encoder over the whole catalogue."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from retrain.batches import left_pad
from retrain.encoder import SequenceEncoder
from retrain.metrics import target_ranks


@torch.no_grad()
def user_vectors(
    encoder: SequenceEncoder,
    rows: Sequence[np.ndarray],
    types: Sequence[np.ndarray],
    batch_size: int = 1024,
) -> torch.Tensor:
    encoder.eval()
    vectors = []
    for start in range(0, len(rows), batch_size):
        item_ids, type_ids, mask = left_pad(
            rows[start : start + batch_size],
            types[start : start + batch_size],
            encoder.config.max_len,
        )
        vectors.append(encoder(item_ids, type_ids, mask))
    return torch.cat(vectors) if vectors else torch.zeros(0, encoder.config.dim)


@torch.no_grad()
def encoder_ranks(
    encoder: SequenceEncoder,
    rows: Sequence[np.ndarray],
    types: Sequence[np.ndarray],
    target_rows: np.ndarray,
    batch_size: int = 1024,
) -> np.ndarray:
    """Rank of each target row among all items (full ranking, padding excluded)."""
    items = encoder.item_vectors()
    ranks = []
    for start in range(0, len(rows), batch_size):
        vectors = user_vectors(
            encoder, rows[start : start + batch_size], types[start : start + batch_size]
        )
        scores = vectors @ items.T
        scores[:, 0] = -torch.inf
        targets = torch.from_numpy(target_rows[start : start + batch_size])
        ranks.append(target_ranks(scores, targets))
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)
