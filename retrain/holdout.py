"""Validation data from the training data alone: the most recent sequences are
held out and every prefix of them becomes a next-item case (the SR-GNN protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

from retrain.data import NextItemCases, UserSequence


def split_recent(
    sequences: Sequence[UserSequence], fraction: float
) -> tuple[list[UserSequence], list[UserSequence]]:
    """(older, most recent `fraction`), by position: loaders return oldest first."""
    cut = len(sequences) - round(len(sequences) * fraction)
    return list(sequences[:cut]), list(sequences[cut:])


def prefix(sequence: UserSequence, end: int) -> UserSequence:
    """The sequence's first `end` events: what was known before event `end`."""
    return UserSequence(
        sequence.user_id, sequence.item_ids[:end], sequence.types[:end], sequence.ts_ms[:end]
    )


def next_item_cases(sequences: Sequence[UserSequence]) -> NextItemCases:
    prefixes, targets, target_types = [], [], []
    for sequence in sequences:
        for end in range(1, len(sequence.item_ids)):
            prefixes.append(prefix(sequence, end))
            targets.append(sequence.item_ids[end])
            target_types.append(sequence.types[end])
    return NextItemCases(prefixes=prefixes, targets=targets, target_types=target_types)
