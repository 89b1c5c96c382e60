"""Offline quality benchmark on yoochoose1_64 (SR-GNN split, full ranking):
trains our models on the training file, ranks all items for every test case
and writes bench/reports/offline.{md,json} with loss and metric curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.common import machine, machine_line
from bench.scenarios.data import YOOCHOOSE, shared

# SR-GNN paper (AAAI 2019), Table 2, on exactly this split.
PUBLISHED = {
    "POP": (6.71, 1.65),
    "Item-KNN": (51.60, 21.81),
    "GRU4Rec": (60.64, 22.89),
    "NARM": (68.32, 28.63),
    "STAMP": (68.74, 29.67),
    "SR-GNN": (70.57, 30.94),
}
GOAL = {"p20": 70.6, "mrr20": 30.9}
OURS = {
    "popularity": "popularity (ours)",
    "item_knn": "item-kNN, last item (ours)",
    "retriever": "SASRec retriever (ours)",
    "retriever_ranker": "retriever + ranker (ours)",
}


def run_bench(data: Path, out: Path, quick: bool = False) -> Path:
    from retrain.offline import quick_plan, run_offline
    from retrain.training import train_plan
    from streamrec.settings import Settings

    plan = train_plan(Settings())
    plan = quick_plan(plan) if quick else plan
    results, _ = run_offline(data, plan, progress=True)
    results["quick"] = quick
    results["machine"] = machine()
    results["command"] = "streamrec bench offline" + (" --quick" if quick else "")
    out.mkdir(parents=True, exist_ok=True)
    stem = "offline-quick" if quick else "offline"
    curves = _plot_curves(results["curves"], out / f"{stem}-curves.png")
    payload = {
        **{name: results["models"][name] for name in OURS},
        "train_seconds": results["train_seconds"],
        "peak_rss_mb": results["peak_rss_mb"],
        "details": {k: v for k, v in results.items() if k not in ("curves",)},
        "curves": results["curves"],
    }
    (out / f"{stem}.json").write_text(
        json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8"
    )
    report = out / f"{stem}.md"
    report.write_text(_markdown(results, curves.name), encoding="utf-8")
    return report


def _plot_curves(curves: dict[str, Any], path: Path) -> Path:
    figure, (loss_axis, metric_axis, ranker_axis) = plt.subplots(1, 3, figsize=(15, 4))
    loss_axis.plot(curves["steps"], curves["losses"])
    loss_axis.set(title="encoder training loss (smoothed)", xlabel="step", ylabel="cross-entropy")
    epochs = [row["epoch"] for row in curves["epochs"]]
    for key, label in (("valid_p20", "P@20"), ("valid_mrr20", "MRR@20")):
        metric_axis.plot(
            epochs,
            [row.get(key, float("nan")) for row in curves["epochs"]],
            marker="o",
            label=label,
        )
    metric_axis.set(title="encoder on held-out training sessions", xlabel="epoch", ylabel="%")
    metric_axis.legend()
    ranker_axis.plot(
        range(1, len(curves["ranker_losses"]) + 1), curves["ranker_losses"], marker="o"
    )
    ranker_axis.set(title="ranker listwise loss", xlabel="epoch", ylabel="loss")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _markdown(results: dict[str, Any], curves_png: str) -> str:
    ours = results["models"]
    best = ours["retriever_ranker"]
    met = best["p20"] >= GOAL["p20"] and best["mrr20"] >= GOAL["mrr20"]
    info = results["machine"]
    lines = [
        "# Offline evaluation: yoochoose1_64 (SR-GNN split)",
        "",
        f"Command: `{results['command']}` (from the repository root; data in `../shared/data/`).",
        machine_line(info),
        "",
        "Protocol: every test prefix ranks **all** items; P@20 (= HR@20) and MRR@20 in percent, "
        f"{results['test_cases']} test cases. Models are trained on `train_sessions.txt` only; "
        "the most "
        "recent 10% of training sessions are held out for validation and for training the ranker. "
        "The test file is read once, at the end.",
        "",
        "| model | P@20 | MRR@20 | source |",
        "|---|---|---|---|",
    ]
    for name, (p20, mrr20) in PUBLISHED.items():
        lines.append(f"| {name} | {p20:.2f} | {mrr20:.2f} | SR-GNN paper, Table 2 |")
    for key, label in OURS.items():
        lines.append(
            f"| {label} | {ours[key]['p20']:.2f} | {ours[key]['mrr20']:.2f} | measured here |"
        )
    lines += [
        "",
        f"Goal (SR-GNN): P@20 ≥ {GOAL['p20']}, MRR@20 ≥ {GOAL['mrr20']}: "
        + (
            "**met**."
            if met
            else f"**not met** (P@20 {best['p20']:.2f}, MRR@20 {best['mrr20']:.2f})."
        ),
        "",
        f"- Training (encoder + ranker, 2 CPU threads): {results['train_seconds']} s; "
        f"test evaluation {results['eval_seconds']} s; baselines {results['baseline_seconds']} s.",
        f"- Peak RSS of the whole run: {results['peak_rss_mb']} MB.",
        f"- Retrieval candidates per case: {results['plan']['candidates']}; "
        "the next item is among them in "
        f"{results['candidate_recall']}% of test cases (the ceiling for the ranker).",
        "- Validation (held-out training sessions the ranker did not see): "
        f"`{json.dumps(results['validation'])}`.",
        f"- Plan: `{json.dumps(results['plan'])}`.",
        "",
        f"![curves]({curves_png})",
        "",
    ]
    if results.get("quick"):
        lines.insert(
            2, "**Quick run** (one encoder epoch): checks the bench works; not the result.\n"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(run_bench(shared(YOOCHOOSE), Path(__file__).parent / "reports", quick=quick))
