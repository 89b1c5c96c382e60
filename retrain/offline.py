"""The offline evaluation harness on the SR-GNN yoochoose1_64 split: every model
ranks all items for each test prefix, in the same run, under the published
protocol. Models are trained on the training file only."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrain.baselines import item_knn_ranks, popularity_ranks
from retrain.candidates import build_candidates
from retrain.covis_cases import CaseReplay, time_ordered_cases
from retrain.data import load_srgnn
from retrain.metrics import summarise
from retrain.popularity import decayed_popularity, last_event_ms
from retrain.ranker import RankerConfig
from retrain.train_encoder import EncoderTraining
from retrain.training import TrainedModels, TrainPlan, evaluate_pair, known_items, train_models


def quick_plan(plan: TrainPlan) -> TrainPlan:
    """A few minutes instead of the full run: one encoder epoch, a light ranker."""
    return replace(
        plan,
        encoder=replace(plan.encoder, epochs=1),
        ranker=replace(plan.ranker, epochs=2),
        validation_cases=2000,
    )


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_offline(
    data_dir: Path, plan: TrainPlan, progress: bool = True
) -> tuple[dict[str, Any], TrainedModels]:
    torch.manual_seed(plan.encoder.seed)
    # The SR-GNN files carry no timestamps: hold out whole (the newest) sessions.
    plan = replace(plan, split="sequences")
    split = load_srgnn(data_dir)
    test = split.test
    results: dict[str, Any] = {
        "dataset": str(data_dir.name),
        "test_cases": len(test.targets),
        "models": {},
    }

    started = time.perf_counter()
    results["models"]["popularity"] = summarise(popularity_ranks(split.train, test)).as_dict()
    results["models"]["item_knn"] = summarise(item_knn_ranks(split.train, test)).as_dict()
    results["baseline_seconds"] = round(time.perf_counter() - started, 1)

    models = train_models(split.train, plan, progress=progress)
    results["train_seconds"] = round(models.seconds, 1)

    started = time.perf_counter()
    popularity = decayed_popularity(split.train, last_event_ms(split.train), plan.half_life_s)
    # Co-visitation as the training sessions left it (the test prefixes come after).
    _, _, events = time_ordered_cases(split.train, ())
    candidates = build_candidates(
        models.encoder, models.vocab, test, popularity, plan.candidates, plan.half_life_s,
        progress, max_recent=plan.recent_candidates, max_covis=plan.covis_candidates,
        replay=CaseReplay(plan.covis, plan.covis_read_items, events, plan.half_life_s),
        moments=[len(events)] * len(test.targets),
        known=known_items(models.vocab, split.train, None),
        max_trending=plan.trending_candidates,
    )  # fmt: skip
    pair = evaluate_pair(models.encoder, models.ranker, candidates, len(models.vocab))
    results["models"]["retriever"] = pair["retriever"]
    results["models"]["retriever_ranker"] = pair["retriever_ranker"]
    hits = candidates.labels.sum(axis=1) > 0
    results["candidate_recall"] = round(100.0 * float(np.mean(hits)), 2)
    results["eval_seconds"] = round(time.perf_counter() - started, 1)
    results["validation"] = models.validation
    results["plan"] = plan.to_dict()
    results["peak_rss_mb"] = round(peak_rss_mb(), 1)
    results["curves"] = {
        "steps": models.encoder_log.steps,
        "losses": models.encoder_log.losses,
        "epochs": models.encoder_log.epoch_metrics,
        "ranker_losses": models.ranker_losses,
    }
    return results, models


__all__ = ["EncoderTraining", "RankerConfig", "TrainPlan", "quick_plan", "run_offline"]
