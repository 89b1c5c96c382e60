"""Small real inputs for the model tests: slices of ../shared/data and tiny models."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from itertools import islice
from pathlib import Path

from retrain.data import UserSequence, load_sequences
from retrain.pipeline import TrainedModels, TrainPlan, train_models
from retrain.ranker import RankerConfig
from retrain.train_encoder import EncoderTraining

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
YOOCHOOSE = DATA / "yoochoose1_64"
TAOBAO = DATA / "taobao_stream" / "events.csv"


def yoochoose_sessions(limit: int, skip: int = 0) -> list[UserSequence]:
    return list(islice(load_sequences(YOOCHOOSE, "srgnn"), skip, skip + limit))


TINY_PLAN = TrainPlan(
    dim=16,
    n_layers=1,
    n_heads=1,
    max_len=20,
    dropout=0.1,
    encoder=EncoderTraining(epochs=1, batch_size=128),
    ranker=RankerConfig(hidden=8, epochs=1, min_cases=1),
    candidates=20,
    validation_cases=200,
)


def tiny_models(sessions: int = 1500, plan: TrainPlan = TINY_PLAN) -> TrainedModels:
    """A quickly trained pair on real sessions: real shapes, not real quality."""
    return train_models(yoochoose_sessions(sessions), replace(plan), progress=False)


@cache
def serving_models() -> TrainedModels:
    """The one tiny pair the model-server tests and the serving drills publish (trained
    once per process; nothing mutates it)."""
    return tiny_models(sessions=600)
