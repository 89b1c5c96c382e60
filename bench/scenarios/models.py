"""The tiny models the serving drills and the model tests use (real shapes on real
sessions, not real quality), how they are published into a registry, and the ways
a registry is broken on purpose."""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import replace
from functools import cache
from pathlib import Path

import torch

from bench.common import republish
from bench.scenarios.data import yoochoose_sessions
from retrain.export import export_ranker
from retrain.publish import load_ranker, publish_models
from retrain.ranker import BLEND_WEIGHTS, Ranker, RankerConfig
from retrain.train_encoder import EncoderTraining
from retrain.training import TrainedModels, TrainPlan, train_models
from streamrec import registry
from streamrec.features import FEATURE_NAMES

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


def reversed_blend(ranker: Ranker) -> Ranker:
    """A copy of `ranker` that scores by the hand blend reversed (the user's own latest
    items, co-visitation neighbours and popular items last): it shows the candidates
    least likely to be next. The canaries meant to be rolled back use it (a trained
    ranker merely negated is no sure loser: on the tiny models' sessions it scored
    better than the trained one)."""
    bad = copy.deepcopy(ranker)
    with torch.no_grad():
        last = bad.mlp[-1]
        assert isinstance(last, torch.nn.Linear)
        last.weight.zero_()
        last.bias.zero_()
        bad.skip.weight.zero_()
        for name, raw_weight in BLEND_WEIGHTS.items():
            if name in FEATURE_NAMES[: bad.n_features]:
                column = FEATURE_NAMES.index(name)
                bad.skip.weight[0, column] = -raw_weight * float(bad.scale[column])
    return bad


def publish_reversed_blend(root: Path, version: str) -> registry.Manifest:
    """A new version of `version` whose ranker is `reversed_blend` of its own, published
    beside it and not current."""
    bad = reversed_blend(load_ranker(root, version))
    with tempfile.TemporaryDirectory() as scratch:
        onnx, weights = Path(scratch) / "ranker.onnx", Path(scratch) / "ranker.pt"
        export_ranker(bad, onnx)
        torch.save(bad.state_dict(), weights)
        return republish(
            root, version, {"ranker.onnx": onnx, "ranker.pt": weights}, make_current=False
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
