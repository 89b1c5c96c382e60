"""What the serving drills share with the model-server tests: the tiny trained models."""

from __future__ import annotations

import pytest

from bench.scenarios.models import serving_models
from retrain.training import TrainedModels


@pytest.fixture(scope="session")
def trained() -> TrainedModels:
    return serving_models()
