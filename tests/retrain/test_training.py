"""Training on a small slice of real sessions must beat popularity: a test that can fail."""

from dataclasses import replace

import pytest

from bench.scenarios.data import yoochoose_sessions
from bench.scenarios.models import TINY_PLAN
from retrain.baselines import popularity_ranks
from retrain.candidates import build_candidates
from retrain.holdout import next_item_cases, split_recent
from retrain.metrics import summarise
from retrain.train_encoder import EncoderTraining
from retrain.training import evaluate_pair, train_models


@pytest.mark.slow
@pytest.mark.parametrize("negatives", [0, 512], ids=["full-softmax", "sampled-softmax"])
def test_sasrec_on_real_sessions_beats_popularity(negatives: int) -> None:
    sessions = yoochoose_sessions(12_000)
    train, test = split_recent(sessions, 0.15)
    training = EncoderTraining(epochs=3, batch_size=128, lr=3e-3, negatives=negatives)
    plan = replace(TINY_PLAN, dim=32, encoder=training, candidates=50)
    models = train_models(train, plan, progress=False)
    cases = next_item_cases(test)
    popularity = summarise(popularity_ranks(train, cases))
    candidates = build_candidates(
        models.encoder, models.vocab, cases, models.popularity, 50, 3600, False
    )
    ours = evaluate_pair(models.encoder, models.ranker, candidates, len(models.vocab))
    assert ours["retriever"]["p20"] > popularity.p20 + 10
    assert ours["retriever"]["mrr20"] > popularity.mrr20 + 5
    assert ours["retriever_ranker"]["p20"] > popularity.p20 + 10


def test_same_data_and_seed_give_the_same_metrics() -> None:
    sessions = yoochoose_sessions(800)
    first = train_models(sessions, TINY_PLAN, progress=False).validation
    second = train_models(sessions, TINY_PLAN, progress=False).validation
    for model in ("retriever", "retriever_ranker"):
        assert first[model]["p20"] == pytest.approx(second[model]["p20"], abs=0.1)
        assert first[model]["mrr20"] == pytest.approx(second[model]["mrr20"], abs=0.1)


def test_a_ranker_with_too_few_cases_is_the_hand_blend() -> None:
    """Too sparse a window (no next item among any candidates, or fewer such cases
    than `min_cases`) still gives a usable ranker: exactly `BLEND_WEIGHTS`, never NaN."""
    import numpy as np
    import torch

    from retrain.ranker import BLEND_WEIGHTS, RankerConfig, train_ranker
    from streamrec.features import FEATURE_NAMES

    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 50, RankerConfig().n_features)).astype(np.float32)
    blend = sum(w * features[..., FEATURE_NAMES.index(n)] for n, w in BLEND_WEIGHTS.items())
    assert isinstance(blend, np.ndarray)  # not sum()'s start, 0: there are weights
    labels = np.zeros((3, 50))
    for few in (labels, np.eye(3, 50)):  # none, then 3 < min_cases
        ranker, losses, _ = train_ranker(features, few, RankerConfig(), progress=False)
        with torch.no_grad():
            scores = ranker(torch.from_numpy(features)).numpy()
        assert losses == [] and np.isfinite(scores).all()
        for case in range(3):
            assert (np.argsort(-scores[case]) == np.argsort(-blend[case])).all()


def test_a_column_constant_in_training_changes_no_score_at_serving() -> None:
    """A shop's data without prices trains a ranker whose price column never varied:
    a catalogue with prices at serving must not move its scores (an untrained weight
    reading a standardised value scaled by 1/1e-3 did)."""
    import numpy as np
    import torch

    from retrain.ranker import RankerConfig, train_ranker
    from streamrec.features import FEATURE_NAMES

    rng = np.random.default_rng(1)
    config = RankerConfig(epochs=1, min_cases=10, hidden=8)
    features = rng.normal(size=(40, 20, config.n_features)).astype(np.float32)
    price = FEATURE_NAMES.index("price_vs_usual_log")
    features[..., price] = 0.0
    labels = np.zeros((40, 20))
    labels[np.arange(40), rng.integers(0, 20, 40)] = 1.0
    ranker, _, _ = train_ranker(features, labels, config, progress=False)
    priced = features.copy()
    priced[..., price] = rng.normal(size=priced.shape[:2]) * 3
    with torch.no_grad():
        before = ranker(torch.from_numpy(features)).numpy()
        after = ranker(torch.from_numpy(priced)).numpy()
    assert np.allclose(before, after, atol=1e-5)
