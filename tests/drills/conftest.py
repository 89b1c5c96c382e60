"""What the serving drills share with the model-server tests: the tiny trained models."""

from __future__ import annotations

import pytest

from retrain.pipeline import TrainedModels
from tests.retrain.fixtures import serving_models


@pytest.fixture(scope="session")
def trained() -> TrainedModels:
    return serving_models()
