"""An in-process replica of the prequential replay's `realtime` variant, for trying
ranker and candidate changes in minutes instead of the live report's hour.

The first model is trained on the warm-up as the first `streamrec retrain` cycle
trains it (`retrain.cycle.cycle_plan`); then every scored event of a user with
history is a case, its candidates and columns built as training builds them
(`retrain.training.case_candidates`: the user's events so far, the co-visitation
table, popularity and trending replayed to that moment). The baselines answer
the same replay as in the live report and are scored on the same events.

What it leaves out, so the live report stays the measure: users without history
(trending, the same answer for every method), the purchase filter, serving's
clock (a case's time is the user's last event), the Redis and broker path.

    python -m bench.replica [--dataset yoochoose|taobao] [--cache DIR]

writes bench/reports/replica.{md,json}; `--cache` keeps the trained first models.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    REPORTS,
    dataset_table_head,
    in_process_report_head,
    machine,
    write_json,
)
from bench.live_replay import (
    event_cases,
    load_replay,
    replay_categories,
    score_baseline,
)
from bench.prequential import DATASETS
from retrain.cycle import cycle_plan
from retrain.data import group_by_user
from retrain.online_baselines import BASELINES
from retrain.training import (
    CaseWindow,
    TrainedModels,
    case_candidates,
    evaluate_pair,
    holdout_slices,
    known_items,
    train_models,
)
from streamrec.settings import Settings

WITH_HISTORY = ("repeat", "new_item")


def replicate(dataset: str, cache: Path | None = None) -> dict[str, Any]:
    """hit@20 / MRR@20 of the replica and of every baseline on the events of users
    with history: all of them, repeats, new items."""
    spec = next(d for d in DATASETS if d.name == dataset)
    replay = load_replay(spec.data, spec.history)
    settings = Settings()
    plan = cycle_plan(settings, first=True)
    warm = group_by_user((e.user_id, e.item_id, e.type, e.ts_ms) for e in replay.warmup)
    categories = replay_categories(replay)
    models = _first_models(
        warm, plan, categories, cache / f"replica-{dataset}.pt" if cache else None
    )
    everything = group_by_user(
        (e.user_id, e.item_id, e.type, e.ts_ms) for e in [*replay.warmup, *replay.scored]
    )
    fit, _, _ = holdout_slices(warm, plan)
    known = known_items(models.vocab, fit, None)
    vocab = models.vocab.grow(i for s in everything for i in s.item_ids)
    known = np.concatenate([known, np.zeros(vocab.n_rows - len(known), dtype=bool)])
    window = CaseWindow(everything, everything, replay.scored[0].ts_ms, None)
    candidates = case_candidates(
        models.encoder, vocab, window, models.popularity, plan, known, True, categories
    )
    pair = evaluate_pair(models.encoder, models.ranker, candidates, len(vocab))
    rows = {
        "replica (retrieval + ranker)": {
            "with_history": pair["retriever_ranker"],
            **pair["by_case"],
        },
        "replica, retrieval order": {"with_history": pair["retriever"]},
        "oracle over the replica's candidates": _oracle(candidates),
    }
    cases, _ = event_cases(replay)
    for name in BASELINES:
        result = score_baseline(
            replay,
            name,
            settings.popularity_half_life_s,
            exclude_purchased=False,  # the replica does not filter either
        )
        groups = {"with_history": np.isin(cases, WITH_HISTORY)} | {
            case: cases == case for case in WITH_HISTORY
        }
        rows[f"baseline `{name}`"] = {
            group: _summary(result.hits[mask], result.reciprocal_ranks[mask])
            for group, mask in groups.items()
        }
    return {
        "dataset": dataset,
        "describe": spec.describe,
        "cases": len(candidates.rows),
        "ranker_validation": models.validation,
        "rows": rows,
    }


def _first_models(
    warm: list[Any], plan: Any, categories: dict[str, tuple[str, ...]], path: Path | None
) -> TrainedModels:
    if path is not None and path.exists():
        models: TrainedModels = torch.load(path, weights_only=False)
        return models
    models = train_models(warm, plan, progress=True, categories=categories)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(models, path)
    return models


def _oracle(candidates: Any) -> dict[str, dict[str, float | int]]:
    """The ceiling of any ranker over these candidates: the next item first whenever
    it is among them (hit@20 = MRR@20 = the candidates' recall)."""
    present = np.array(
        [
            target > 0 and bool((rows == target).any())
            for rows, target in zip(candidates.rows, candidates.target_rows, strict=True)
        ]
    )
    repeats = candidates.repeats
    return {
        group: _summary(present[mask], present[mask].astype(float))
        for group, mask in (
            ("with_history", np.ones(len(present), dtype=bool)),
            ("repeat", repeats),
            ("new_item", ~repeats),
        )
    }


def _summary(hits: np.ndarray, reciprocal_ranks: np.ndarray) -> dict[str, float | int]:
    return {
        "p20": round(100 * float(hits.mean()), 2),
        "mrr20": round(100 * float(reciprocal_ranks.mean()), 2),
        "cases": len(hits),
    }


def _markdown(results: list[dict[str, Any]], command: str, load: tuple[float, float]) -> str:
    lines = in_process_report_head(
        "Prequential replica (in-process)",
        command,
        load,
        "The `realtime` variant rebuilt in-process (bench/replica.py says what it leaves "
        "out): events of users with history only. hit@20 / MRR@20 (cases):",
    )
    for result in results:
        lines += dataset_table_head(result, ("", "with history", "repeat", "new_item"))
        for name, row in result["rows"].items():
            cells = [
                f"{row[g]['p20']:.2f} / {row[g]['mrr20']:.2f} ({row[g]['cases']:,})"
                if g in row
                else "-"
                for g in ("with_history", *WITH_HISTORY)
            ]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=[d.name for d in DATASETS], action="append")
    parser.add_argument("--cache", type=Path, help="keep the trained first models here")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results = [replicate(name, args.cache) for name in args.dataset or [d.name for d in DATASETS]]
    command = "python -m bench.replica" + "".join(
        f" --dataset {name}" for name in args.dataset or []
    )
    write_json("replica", {"results": results, "command": command, "machine": machine()})
    path = REPORTS / "replica.md"
    path.write_text(
        _markdown(results, command, (load_before, os.getloadavg()[0])), encoding="utf-8"
    )
    print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
