"""How good `POST /similar`'s rule is at naming the next item from the current one,
against what a shop would write first (item co-occurrence counts), on the
prequential replays: every scored event whose user has an earlier event is a case,
"similar to the user's previous item" its list, hit@20 / MRR@20 its score.

Each list is built as the server builds it (`Recommender.similar`): the replayed
co-visitation table (`streamrec.covis.CovisTable`, the stream worker's rule, as it
was just before the event), the most popular items of the previous item's
category (Taobao: the events' `category_id`), the first model's item vectors
(trained on the warm-up as the first retrain cycle trains it), then popularity.
Each method leaves the previous item itself out. In-process, no Redis: what it
measures is the rule, not the service.

    python -m bench.similar [--dataset yoochoose|taobao] [--quick]

writes bench/reports/similar.{md,json} (`--quick`: the first 2,000 cases,
similar-quick.*).
"""

from __future__ import annotations

import argparse
import heapq
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bench.common import (
    REPORTS,
    dataset_table_head,
    in_process_report_head,
    machine,
    write_json,
)
from bench.live_replay import load_replay, replay_categories
from bench.prequential import DATASETS
from retrain.cycle import cycle_plan
from retrain.data import group_by_user
from retrain.online_baselines import Cooc
from retrain.popularity import CategoryPopularity, Popularity
from retrain.training import train_models
from streamrec.covis import CovisTable, covis_scores
from streamrec.events import Event, EventType
from streamrec.settings import Settings
from streamrec.state import covis_rule

K = 20
READ = 50  # links and vector neighbours read per item, as the server reads them
QUICK_CASES = 2000

Lists = dict[str, Callable[[str], list[str]]]


def measure(dataset: str, quick: bool = False) -> dict[str, Any]:
    spec = next(d for d in DATASETS if d.name == dataset)
    replay = load_replay(spec.data, spec.history)
    settings = Settings()
    plan = cycle_plan(settings, first=True)
    warm = group_by_user((e.user_id, e.item_id, e.type, e.ts_ms) for e in replay.warmup)
    models = train_models(warm, plan, progress=True)
    vectors = models.encoder.item_vectors().detach()
    vocab = models.vocab
    categories = replay_categories(replay)
    half_life_s = settings.popularity_half_life_s

    rule = covis_rule(settings)
    table = CovisTable(rule)
    counted = Cooc(half_life_s)  # the `cooc` baseline's counts (last 5 distinct items)
    last_item: dict[str, str] = {}
    popularity = Popularity(half_life_s)
    by_category = CategoryPopularity(categories, half_life_s, keep=100)
    now_ms = 0

    def observe(user_id: str, item_id: str, ts_ms: int) -> None:
        table.apply(user_id, item_id, ts_ms)
        counted.observe(Event("", user_id, item_id, EventType.CLICK, ts_ms))
        last_item[user_id] = item_id
        popularity.observe_at(item_id, ts_ms)
        by_category.observe(item_id, ts_ms)

    def links(item: str) -> list[str]:
        _, weights = covis_scores([table.neighbours(item)], now_ms, rule.half_life_s)
        return [i for i, _ in heapq.nlargest(READ, weights.items(), key=lambda p: (p[1], p[0]))]

    def nearest(item: str) -> list[str]:
        if item not in vocab:
            return []
        scores = vectors @ vectors[vocab.row(item)]
        scores[0] = -torch.inf  # padding
        rows = torch.topk(scores, min(READ + 1, len(scores))).indices.tolist()
        return [vocab.item_id(r) for r in rows if r > 0]

    def category(item: str) -> list[str]:
        return [i for items in by_category.of_item(item, 100) for i in items]

    def cooc(item: str) -> list[str]:
        return counted.neighbours(item, K + 1)

    methods: Lists = {
        "/similar as served (links, category, vectors, popular)": lambda i: [
            *links(i),
            *category(i),
            *nearest(i),
        ],
        "links, vectors, category, popular (the first order, not kept)": lambda i: [
            *links(i),
            *nearest(i),
            *category(i),
        ],
        "links only": links,
        "vectors only": nearest,
        "co-occurrence counts (baseline)": cooc,
        "co-occurrence, then category (baseline)": lambda i: [*cooc(i), *category(i)],
    }
    for event in replay.warmup:
        observe(event.user_id, event.item_id, event.ts_ms)
    hits: dict[str, list[bool]] = {name: [] for name in methods}
    ranks: dict[str, list[float]] = {name: [] for name in methods}
    cases = 0
    for event in tqdm(replay.scored, desc=f"{dataset} similar", leave=False):
        previous = last_item.get(event.user_id)
        now_ms = event.ts_ms
        if previous is not None:
            cases += 1
            for name, build in methods.items():
                listed = _top(build(previous), popularity.ranked(3 * K), previous)
                rank = listed.index(event.item_id) + 1 if event.item_id in listed else 0
                hits[name].append(rank > 0)
                ranks[name].append(1.0 / rank if rank else 0.0)
        observe(event.user_id, event.item_id, event.ts_ms)
        if quick and cases >= QUICK_CASES:
            break
    return {
        "dataset": dataset,
        "describe": spec.describe,
        "cases": cases,
        "rows": {
            name: {
                "p20": round(100 * float(np.mean(hits[name])), 2),
                "mrr20": round(100 * float(np.mean(ranks[name])), 2),
            }
            for name in methods
        },
    }


def _top(items: Sequence[str], fill: Sequence[str], leave_out: str) -> list[str]:
    """The first K distinct items of `items`, then of `fill`, never `leave_out`."""
    chosen: dict[str, None] = {}
    for item in (*items, *fill):
        if len(chosen) == K:
            break
        if item != leave_out:
            chosen.setdefault(item)
    return list(chosen)


def _markdown(results: list[dict[str, Any]], command: str, load: tuple[float, float]) -> str:
    lines = in_process_report_head(
        "/similar's rule on the prequential replays",
        command,
        load,
        'Every scored event of a user with an earlier event: the list "similar to the '
        "user's previous item\" (bench/similar.py says how each is built). hit@20 / MRR@20:",
    )
    for result in results:
        lines += dataset_table_head(result, ("list", "hit@20 / MRR@20"))
        lines += [
            f"| {name} | {row['p20']:.2f} / {row['mrr20']:.2f} |"
            for name, row in result["rows"].items()
        ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=[d.name for d in DATASETS], action="append")
    parser.add_argument("--quick", action="store_true", help="the first 2,000 cases only")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    names = args.dataset or [d.name for d in DATASETS]
    results = [measure(name, args.quick) for name in names]
    command = "python -m bench.similar" + "".join(f" --dataset {n}" for n in args.dataset or [])
    command += " --quick" if args.quick else ""
    stem = "similar-quick" if args.quick else "similar"
    write_json(stem, {"results": results, "command": command, "machine": machine()})
    path = REPORTS / f"{stem}.md"
    path.write_text(
        _markdown(results, command, (load_before, os.getloadavg()[0])), encoding="utf-8"
    )
    print(path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
