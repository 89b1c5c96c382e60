"""Offline metrics under the published protocol: full ranking over all items.

P@20 (= HR@20) is the share of cases whose next item ranks in the top k;
MRR@20 is the mean reciprocal rank, 0 beyond k. Both in percent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class RankingMetrics:
    p20: float
    mrr20: float
    cases: int

    def as_dict(self) -> dict[str, float | int]:
        return {"p20": round(self.p20, 2), "mrr20": round(self.mrr20, 2), "cases": self.cases}


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among all scored items; a tie counts against
    the target. A target that cannot be scored (column 0, padding) gets rank
    n + 1, a miss."""
    target_scores = scores.gather(1, targets.clamp(min=0).unsqueeze(1))
    ranks = (scores >= target_scores).sum(dim=1)
    return torch.where(targets > 0, ranks, torch.full_like(ranks, scores.shape[1] + 1))


def summarise(ranks: np.ndarray, k: int = 20) -> RankingMetrics:
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        return RankingMetrics(0.0, 0.0, 0)
    hits = ranks <= k
    p_at_k = 100.0 * float(hits.mean())
    mrr_at_k = 100.0 * float(np.where(hits, 1.0 / ranks, 0.0).mean())
    return RankingMetrics(p_at_k, mrr_at_k, len(ranks))
