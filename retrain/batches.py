"""Turning sequences into the encoder's left-padded tensors.

Left padding puts every sequence's latest event in the last column, which is
where the encoder reads the user vector from, in training and in serving.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from retrain.data import UserSequence
from retrain.vocab import ItemVocab
from streamrec.features import ENCODER_TYPE_IDS as TYPE_IDS
from streamrec.user_vectors import left_padded


def encode(
    sequences: Sequence[UserSequence], vocab: ItemVocab
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(item rows, type ids) per sequence; unknown items are dropped."""
    encoded = []
    for sequence in sequences:
        pairs = [
            (vocab.row(item_id), TYPE_IDS[event_type])
            for item_id, event_type in zip(sequence.item_ids, sequence.types, strict=True)
            if item_id in vocab
        ]
        rows = np.array([p[0] for p in pairs], dtype=np.int64)
        types = np.array([p[1] for p in pairs], dtype=np.int64)
        encoded.append((rows, types))
    return encoded


def training_windows(
    encoded: Sequence[tuple[np.ndarray, np.ndarray]], max_len: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sequences of at least two events, long ones cut into windows of max_len + 1."""
    windows = []
    for rows, types in encoded:
        if len(rows) < 2:
            continue
        for start in range(0, len(rows) - 1, max_len):
            end = min(start + max_len + 1, len(rows))
            if end - start >= 2:
                windows.append((rows[start:end], types[start:end]))
    return windows


def left_pad(
    rows: Sequence[np.ndarray], types: Sequence[np.ndarray], max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`streamrec.user_vectors.left_padded` (what serving pads with) as tensors."""
    item_ids, type_ids, mask = left_padded(rows, types, max_len)
    return torch.from_numpy(item_ids), torch.from_numpy(type_ids), torch.from_numpy(mask)


def training_batches(
    windows: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled batches of similar length (less padding): inputs, types, mask, next items."""
    order = rng.permutation(len(windows))
    # Sort shuffled chunks by length, then shuffle the batches themselves.
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(windows[i][0]))
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    for batch_index in rng.permutation(len(batches)):
        batch = [windows[i] for i in batches[batch_index]]
        inputs = [rows[:-1] for rows, _ in batch]
        kinds = [types[:-1] for _, types in batch]
        targets = [rows[1:] for rows, _ in batch]
        item_ids, type_ids, mask = left_pad(inputs, kinds, max_len=10**9)
        next_ids, _, _ = left_pad(targets, kinds, max_len=10**9)
        yield item_ids, type_ids, mask, next_ids
