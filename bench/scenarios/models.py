"""The tiny models the serving drills and the model tests use (real shapes on real
sessions, not real quality), how they are published into a registry, and the ways
a registry is broken on purpose."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

from bench.scenarios.data import yoochoose_sessions
from retrain.publish import publish_models
from retrain.ranker import RankerConfig
from retrain.train_encoder import EncoderTraining
from retrain.training import TrainedModels, TrainPlan, train_models
from streamrec import registry

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


def publish(
    models: TrainedModels, root: Path, parent: str | None = None, make_current: bool = True
) -> registry.Manifest:
    return publish_models(
        models, root, TINY_PLAN, {"source": "test"}, parent, 100_000, make_current=make_current
    )


def point_current_at(root: Path, version: str) -> None:
    """Move CURRENT without the registry's own verification: what a bad actor or a
    half-copied volume could do, and what the server must survive."""
    temp = root / ".CURRENT.tmp"
    temp.write_text(json.dumps({"version": version}))
    temp.replace(root / registry.CURRENT)


def corrupt(root: Path, version: str, name: str = "ranker.onnx") -> None:
    path = root / version / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
