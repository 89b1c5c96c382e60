"""Candidates for held-out cases and their ranking features, as the model server
builds them: the encoder's top-k by inner product over the items it was trained
on, then the user's own recent items and the strongest co-visitation neighbours
(`features.extra_candidates`, the table as it was at the case's moment), then
`streamrec.features.ranking_features` per case. Items the encoder never trained on
(`known`) enter only as extras and without a dot, as a new item does in serving."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from retrain.batches import encode
from retrain.covis_cases import CaseReplay
from retrain.data import NextItemCases
from retrain.encoder import SequenceEncoder
from retrain.popularity import user_state
from retrain.score import user_vectors
from retrain.vocab import ItemVocab
from streamrec.events import EventType
from streamrec.features import (
    FEATURE_NAMES,
    TYPE_WEIGHTS,
    category_read,
    extra_candidates,
    popularity_rows,
    ranking_features,
)

# Trending items read per case, of which the first `max_trending` the encoder knows
# join the candidates (the replayed table keeps this many at hand).
TRENDING_READ = 64


@dataclass(frozen=True)
class CandidateSet:
    rows: np.ndarray  # (cases, width) vocab rows, retrieval's first; 0 pads a short list
    features: np.ndarray  # (cases, width, n_features)
    labels: np.ndarray  # (cases, width) weight of the next event's type on its candidate
    target_rows: np.ndarray  # (cases,) vocab row of the next item, 0 when unknown
    repeats: np.ndarray  # (cases,) the next item is one the user touched before


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
    max_covis: int = 0,
    replay: CaseReplay | None = None,
    moments: Sequence[int] | None = None,
    known: np.ndarray | None = None,
    max_trending: int = 0,
    max_category: int = 0,
) -> CandidateSet:
    """`replay` with `moments` (from `covis_cases.time_ordered_cases`) gives each case
    the co-visitation scores, item popularity and trending items as they were then;
    without it every case takes `popularity` (and the trending items by it).
    `known` (bool per vocab row) marks the items the encoder trained on (default:
    all)."""
    n = len(cases.targets)
    known_rows = np.ones(vocab.n_rows, dtype=bool) if known is None else known.copy()
    known_rows[0] = False
    # A catalogue smaller than the candidate count gives them all.
    k = min(k, int(known_rows.sum()))
    width = k + max_recent + max_covis + max_trending + max_category
    rows = np.zeros((n, width), dtype=np.int64)
    features = np.zeros((n, width, len(FEATURE_NAMES)), dtype=np.float32)
    labels = np.zeros((n, width), dtype=np.float32)
    target_rows = np.array([vocab.row(t) for t in cases.targets], dtype=np.int64)
    encoded = encode(cases.prefixes, vocab)
    items = encoder.item_vectors()
    if vocab.n_rows > len(items):
        # Items that arrived after this encoder (a serving version measured on new
        # data): candidates only as extras, without a vector.
        encoder_rows = len(items)
        known_rows[encoder_rows:] = False
        items = torch.cat([items, items.new_zeros(vocab.n_rows - encoder_rows, items.shape[1])])
        encoded = [(r[r < encoder_rows], t[r < encoder_rows]) for r, t in encoded]
    unknown = torch.from_numpy(~known_rows)
    # Every item's popularity row once, indexed by vocab row (row 0, padding, is zeros).
    popularity_by_row = popularity_rows(("", *vocab.item_ids), popularity)
    popularity_by_row[0] = 0.0

    def known_only(item_ids: Sequence[str]) -> list[str]:
        # Serving's trending holds only items the served model knows (docs/serving.md).
        return [i for i in item_ids if i in vocab and known_rows[vocab.row(i)]][:max_trending]

    static_trending = known_only(_trending(popularity, len(popularity)))
    for start in tqdm(
        range(0, n, batch_size), desc="candidates", disable=not progress, leave=False
    ):
        stop = min(start + batch_size, n)
        vectors = user_vectors(
            encoder, [e[0] for e in encoded[start:stop]], [e[1] for e in encoded[start:stop]]
        )
        scores = vectors @ items.T
        scores[:, unknown] = -torch.inf
        top_scores, top_rows = scores.topk(k, dim=1)
        for case in range(start, stop):
            prefix = cases.prefixes[case]
            now_ms = prefix.ts_ms[-1] if prefix.ts_ms else 0
            state = user_state(prefix.item_ids, prefix.types, prefix.ts_ms)
            trending = static_trending
            if replay is not None and moments is not None:
                replay.advance(moments[case])
                total, latest = replay.covis(prefix.item_ids, now_ms)
                state = replace(state, covis_total=total, covis_latest=latest)
                trending = known_only(replay.popularity.trending.ranked(TRENDING_READ))
                state = replace(state, prices=replay.prices)
                if replay.categories:
                    read = category_read(max_category)
                    state = replace(
                        state,
                        category_items=replay.category_items(prefix.item_ids, read),
                        categories=replay.categories,
                    )
            # No item the encoder knows: no user vector, only the extras (as serving).
            has_vector = len(encoded[case][0]) > 0
            retrieved = top_rows[case - start].numpy() if has_vector else top_rows[0, :0].numpy()
            retrieved_dots = top_scores[case - start, : len(retrieved)].numpy()
            candidate_ids = [vocab.item_id(int(r)) for r in retrieved]
            extra = extra_candidates(
                candidate_ids, state, max_recent, max_covis, trending, max_category
            )
            extra_rows = np.array([vocab.row(i) for i in extra], dtype=np.int64)
            extra_dots = np.where(
                known_rows[extra_rows] & has_vector,
                scores[case - start, torch.from_numpy(extra_rows)].numpy(),
                np.nan,
            )
            case_rows = np.concatenate([retrieved, extra_rows])
            dots = np.concatenate([retrieved_dots, extra_dots])
            if not len(case_rows):
                continue
            used = len(case_rows)
            rows[case, :used] = case_rows
            ids = candidate_ids + extra
            first_seen = None
            if replay is not None and moments is not None:
                case_popularity = replay.popularity.rows(ids, now_ms)
                first_seen = replay.popularity.first_seen(ids)
            else:
                case_popularity = popularity_by_row[case_rows]
            features[case, :used] = ranking_features(
                ids, dots, state, case_popularity, now_ms, half_life_s, first_seen
            )
            hit = np.flatnonzero(case_rows == target_rows[case])
            if target_rows[case] > 0 and len(hit):
                labels[case, hit[0]] = TYPE_WEIGHTS[cases.target_types[case]]
    repeats = np.array(
        [t in set(p.item_ids) for p, t in zip(cases.prefixes, cases.targets, strict=True)],
        dtype=bool,
    )
    return CandidateSet(rows, features, labels, target_rows, repeats)


def _trending(popularity: Mapping[str, Mapping[EventType, float]], n: int) -> list[str]:
    """The `n` most popular items, every event type alike (as serving's trending)."""
    if n <= 0:
        return []
    totals = {item: sum(by_type.values()) for item, by_type in popularity.items()}
    return sorted(totals, key=lambda item: (-totals[item], item))[:n]


def ranked_target_ranks(candidates: CandidateSet, scores: np.ndarray, n_items: int) -> np.ndarray:
    """Rank of the next item after reordering the candidates by `scores` (padding
    excluded); a next item outside the candidates ranks after all of them (a miss
    at k <= 20)."""
    ranks = np.full(len(scores), n_items + 1, dtype=np.int64)
    for case in range(len(scores)):
        hit = np.flatnonzero(candidates.rows[case] == candidates.target_rows[case])
        if candidates.target_rows[case] > 0 and len(hit):
            real = candidates.rows[case] > 0
            ranks[case] = int((scores[case][real] >= scores[case, hit[0]]).sum())
    return ranks
