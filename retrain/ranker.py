"""The ranker: an MLP over the rows of `streamrec.features.ranking_features`,
trained listwise (softmax over one case's retrieval candidates) so it learns
to reorder exactly what serving hands it. Purchases weigh more than clicks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from streamrec.features import FEATURE_NAMES

log = logging.getLogger(__name__)

# Raw weights of the ranker's starting point (see `train_ranker`): retrieval
# order. A hand blend ({"distinct_recency_inv": 20, "covis_total_log": 4} on top)
# cost 1.35 MRR@20 on the yoochoose replay's first 4,000 events (docs/models.md).
PRIOR_WEIGHTS = {"user_item_dot": 1.0}

# Raw weights of the ranker when there are too few cases to train it: what a
# practitioner would blend by hand, the user's own items latest first, then the
# co-visitation neighbours, then what is popular (the retrieval dot left out: an
# encoder trained on so little data ranked worse with it).
BLEND_WEIGHTS = {
    "distinct_recency_inv": 20.0,
    "covis_total_log": 8.0,
    "popularity_weighted_log": 1.0,
    # The catalogue's categories, where there is one: the most popular items of the
    # latest item's category, in order, and how much of the user's history shares a
    # candidate's category (a plateau on the Taobao replica: docs/models.md).
    "category_rank_inv": 6.0,
    "category_share": 5.0,
}


# The standardisation scale of a column constant in training: any value it takes at
# serving standardises to ~0 (float32 holds it; 1/it is not a denormal problem).
IGNORED_SCALE = 1e30


@dataclass(frozen=True)
class RankerConfig:
    n_features: int = len(FEATURE_NAMES)
    hidden: int = 64
    epochs: int = 12
    batch_cases: int = 256
    lr: float = 3e-3
    seed: int = 0
    # Fewer cases than this with the next item among the candidates: no training,
    # the ranker is `BLEND_WEIGHTS` (on the Taobao warm-up's 30 such cases a trained
    # ranker was noise: docs/models.md).
    min_cases: int = 500

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


class Ranker(nn.Module):
    mean: torch.Tensor  # buffers: standardisation inside the module, so in the ONNX graph
    scale: torch.Tensor
    """Feature standardisation is part of the module, so ONNX carries it."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(config.n_features))
        self.register_buffer("scale", torch.ones(config.n_features))
        self.mlp = nn.Sequential(
            nn.Linear(config.n_features, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 1),
        )
        # A linear skip: the ranker starts as a hand-written blend (`PRIOR_WEIGHTS`).
        self.skip = nn.Linear(config.n_features, 1, bias=False)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        standard = (features - self.mean) / self.scale
        scores: torch.Tensor = self.mlp(standard) + self.skip(standard)
        return scores.squeeze(-1)


class _Rows:
    """Some cases of a (cases, candidates, features) array as float32 tensors, made
    for the cases asked (a batch), never for all at once."""

    def __init__(self, features: np.ndarray, cases: np.ndarray) -> None:
        self.features = features
        self.cases = cases

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, positions: torch.Tensor | slice) -> torch.Tensor:
        chosen = self.cases[positions.numpy() if isinstance(positions, torch.Tensor) else positions]
        return torch.from_numpy(self.features[chosen].astype(np.float32, copy=False))


def _column_moments(
    x: _Rows, present: torch.Tensor, cases_per_step: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation per feature over the present rows of
    `x`, a slice of cases at a time instead of one copy of every row, in float64."""
    total = torch.zeros(x.features.shape[-1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for start in range(0, len(x), cases_per_step):
        step = slice(start, start + cases_per_step)
        rows = x[step][present[step]].double()
        total += rows.sum(dim=0)
        squares += (rows * rows).sum(dim=0)
        count += len(rows)
    mean = total / count
    variance = (squares / count - mean * mean).clamp(min=0.0)
    return mean.float(), variance.sqrt().float()


def train_ranker(
    features: np.ndarray,
    labels: np.ndarray,
    config: RankerConfig,
    progress: bool = True,
    real: np.ndarray | None = None,
) -> tuple[Ranker, list[float], float]:
    """`features` (cases, candidates, n_features); `labels` (cases, candidates), the
    weight of the event that came next on its candidate (0 elsewhere); `real`
    (cases, candidates) False where a short candidate list was padded. Cases whose
    next item was not among the candidates carry no signal and are left out."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    keep = labels.sum(axis=1) > 0
    # The kept cases by position, read a batch at a time: the feature rows are most of
    # a retrain cycle's memory, and a copy of them all would double it.
    kept = np.flatnonzero(keep)
    x = _Rows(features, kept)
    y = torch.from_numpy(labels[keep].astype(np.float32, copy=False))
    present = torch.from_numpy(
        np.ones(labels.shape, dtype=bool)[keep] if real is None else real[keep]
    )
    ranker = Ranker(config)
    if bool(present.any()):
        mean, std = _column_moments(x, present)
        ranker.mean.copy_(mean)
        # A column that never varied in training (no prices, no categories in this
        # data) is scaled to nothing: untrained weights must not read it at serving.
        ranker.scale.copy_(torch.where(std < 1e-6, IGNORED_SCALE, std.clamp(min=1e-3)))
    trains = int(keep.sum()) >= config.min_cases
    with torch.no_grad():
        # The skip starts from `PRIOR_WEIGHTS`, or is `BLEND_WEIGHTS` for good.
        ranker.skip.weight.zero_()
        for name, raw_weight in (PRIOR_WEIGHTS if trains else BLEND_WEIGHTS).items():
            column = FEATURE_NAMES.index(name)
            ranker.skip.weight[0, column] = raw_weight * float(ranker.scale[column])
    if not trains:
        # Too little to learn from (most users act once or twice, or the next item
        # is rarely among the candidates): the hand blend, exactly.
        log.warning(
            "%d of %d ranker cases have the next item among the candidates (minimum %d): "
            "the ranker is the hand blend",
            int(keep.sum()), len(labels), config.min_cases,
        )  # fmt: skip
        with torch.no_grad():
            last = ranker.mlp[-1]
            assert isinstance(last, nn.Linear)
            last.weight.zero_()
            last.bias.zero_()
        ranker.eval()
        return ranker, [], 0.0
    optimizer = torch.optim.AdamW(ranker.parameters(), lr=config.lr, weight_decay=1e-4)
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="ranker", disable=not progress, leave=False)
    for _ in bar:
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(order), config.batch_cases):
            batch = torch.from_numpy(order[start : start + config.batch_cases])
            scores = ranker(x[batch]).masked_fill(~present[batch], -torch.inf)
            weights = y[batch].sum(dim=1)
            # Listwise: the next item should win the softmax over the candidates;
            # a purchase case counts more than a click case.
            target = y[batch] / weights.unsqueeze(1)
            log_p = F.log_softmax(scores, dim=1).masked_fill(~present[batch], 0.0)
            loss = (-(target * log_p).sum(dim=1) * weights).sum() / weights.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / max(len(x), 1))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    ranker.eval()
    return ranker, losses, time.perf_counter() - started
