import numpy as np
import pytest
import torch

from retrain.metrics import summarise, target_ranks


def test_ranks_on_a_hand_computed_case() -> None:
    scores = torch.tensor(
        [
            [-np.inf, 0.9, 0.1, 0.5, 0.3],  # target 3 (0.5): only 0.9 above -> rank 2
            [-np.inf, 0.2, 0.2, 0.1, 0.0],  # target 2 ties with 1 -> counted against: rank 2
            [-np.inf, 0.1, 0.2, 0.3, 0.4],  # target 4 is best -> rank 1
            [-np.inf, 0.1, 0.2, 0.3, 0.4],  # target 0: unknown item -> a miss
        ]
    )
    targets = torch.tensor([3, 2, 4, 0])
    assert target_ranks(scores, targets).tolist() == [2, 2, 1, 6]


def test_p20_and_mrr20_on_a_hand_computed_case() -> None:
    ranks = np.array([1, 2, 20, 21, 100])
    metrics = summarise(ranks, k=20)
    # hits: ranks 1, 2, 20 -> 3 of 5; reciprocal ranks 1 + 1/2 + 1/20, none beyond 20.
    assert metrics.p20 == pytest.approx(60.0)
    assert metrics.mrr20 == pytest.approx(100 * (1 + 0.5 + 0.05) / 5)
    assert metrics.cases == 5


def test_empty_cases_give_zero() -> None:
    assert summarise(np.array([], dtype=np.int64)).p20 == 0.0
