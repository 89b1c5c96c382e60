"""Retrieval candidates for held-out cases and their ranking features: the
encoder's top-k by inner product with the user's own recent items in the last
places (`features.with_recent_items`, as serving does), then `streamrec.features.ranking_features`
per case, as the model server will compute them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from retrain.batches import encode
from retrain.data import NextItemCases
from retrain.encoder import SequenceEncoder
from retrain.popularity import user_state
from retrain.score import user_vectors
from retrain.vocab import ItemVocab
from streamrec.events import EventType
from streamrec.features import (
    FEATURE_NAMES,
    TYPE_WEIGHTS,
    popularity_rows,
    ranking_features,
    with_recent_items,
)


@dataclass(frozen=True)
class CandidateSet:
    rows: np.ndarray  # (cases, k) vocab rows, best retrieval score first
    features: np.ndarray  # (cases, k, n_features)
    labels: np.ndarray  # (cases, k) weight of the next event's type on its candidate
    target_rows: np.ndarray  # (cases,) vocab row of the next item, 0 when unknown


@torch.no_grad()
def build_candidates(
    encoder: SequenceEncoder,
    vocab: ItemVocab,
    cases: NextItemCases,
    popularity: Mapping[str, Mapping[EventType, float]],
    k: int,
    half_life_s: float,
    progress: bool = True,
    batch_size: int = 1024,
    max_recent: int = 0,
) -> CandidateSet:
    n = len(cases.targets)
    # A catalogue smaller than the candidate count (row 0 is padding) gives them all.
    k = min(k, len(vocab))
    rows = np.zeros((n, k), dtype=np.int64)
    features = np.zeros((n, k, len(FEATURE_NAMES)), dtype=np.float32)
    labels = np.zeros((n, k), dtype=np.float32)
    target_rows = np.array([vocab.row(t) for t in cases.targets], dtype=np.int64)
    encoded = encode(cases.prefixes, vocab)
    items = encoder.item_vectors()
    # Every item's popularity row once, indexed by vocab row (row 0, padding, is zeros).
    popularity_by_row = popularity_rows(("", *vocab.item_ids), popularity)
    popularity_by_row[0] = 0.0
    for start in tqdm(
        range(0, n, batch_size), desc="candidates", disable=not progress, leave=False
    ):
        stop = min(start + batch_size, n)
        vectors = user_vectors(
            encoder, [e[0] for e in encoded[start:stop]], [e[1] for e in encoded[start:stop]]
        )
        scores = vectors @ items.T
        scores[:, 0] = -torch.inf
        top_scores, top_rows = scores.topk(k, dim=1)
        for case in range(start, stop):
            recent_rows = encoded[case][0]
            case_rows, dots = with_recent_items(
                top_rows[case - start].numpy(),
                top_scores[case - start].numpy(),
                recent_rows,
                scores[case - start, torch.from_numpy(recent_rows)].numpy(),
                max_recent,
            )
            rows[case] = case_rows
            prefix = cases.prefixes[case]
            candidate_ids = [vocab.item_id(int(r)) for r in rows[case]]
            state = user_state(prefix.item_ids, prefix.types, prefix.ts_ms)
            now_ms = prefix.ts_ms[-1] if prefix.ts_ms else 0
            features[case] = ranking_features(
                candidate_ids,
                dots,
                state,
                popularity_by_row[rows[case]],
                now_ms,
                half_life_s,
            )
            hit = np.flatnonzero(rows[case] == target_rows[case])
            if target_rows[case] > 0 and len(hit):
                labels[case, hit[0]] = TYPE_WEIGHTS[cases.target_types[case]]
    return CandidateSet(rows=rows, features=features, labels=labels, target_rows=target_rows)


def ranked_target_ranks(candidates: CandidateSet, scores: np.ndarray, n_items: int) -> np.ndarray:
    """Rank of the next item after reordering the candidates by `scores`; a next
    item outside the candidates ranks after all of them (a miss at k <= 20)."""
    ranks = np.full(len(scores), n_items + 1, dtype=np.int64)
    for case in range(len(scores)):
        hit = np.flatnonzero(candidates.rows[case] == candidates.target_rows[case])
        if candidates.target_rows[case] > 0 and len(hit):
            ranks[case] = int((scores[case] >= scores[case, hit[0]]).sum())
    return ranks
