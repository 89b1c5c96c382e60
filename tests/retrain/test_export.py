from pathlib import Path

import numpy as np
import pytest

from bench.scenarios.data import yoochoose_sessions
from bench.scenarios.models import tiny_models
from retrain.batches import encode, left_pad
from retrain.export import PARITY_TOLERANCE, export_encoder, export_ranker, parity_error
from retrain.holdout import next_item_cases
from retrain.training import TrainedModels


@pytest.fixture(scope="module")
def models() -> TrainedModels:
    return tiny_models()


def test_encoder_onnx_matches_torch_on_real_sessions(models: TrainedModels, tmp_path: Path) -> None:
    cases = next_item_cases(yoochoose_sessions(200, skip=1500))
    encoded = encode(cases.prefixes, models.vocab)
    item_ids, type_ids, mask = left_pad([e[0] for e in encoded], [e[1] for e in encoded], 20)
    path = tmp_path / "user_encoder.onnx"
    export_encoder(models.encoder, path)
    inputs = {"item_ids": item_ids.numpy(), "type_ids": type_ids.numpy(), "mask": mask.numpy()}
    assert item_ids.shape[0] > 100 and item_ids.shape[1] > 5  # real, varied lengths
    assert parity_error(path, models.encoder, inputs) <= PARITY_TOLERANCE


def test_ranker_onnx_matches_torch_on_real_features(models: TrainedModels, tmp_path: Path) -> None:
    from retrain.candidates import build_candidates

    cases = next_item_cases(yoochoose_sessions(100, skip=1500))
    candidates = build_candidates(
        models.encoder, models.vocab, cases, models.popularity, 20, 3600, False
    )
    features = candidates.features.reshape(-1, candidates.features.shape[-1])
    path = tmp_path / "ranker.onnx"
    export_ranker(models.ranker, path)
    assert np.isfinite(features).all()
    assert parity_error(path, models.ranker, {"features": features}) <= PARITY_TOLERANCE
