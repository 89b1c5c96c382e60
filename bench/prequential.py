"""Prequential benchmark: the four variants of bench/live_replay.py and the
online baselines beside them, on the yoochoose_sessions test day (the days
before it as warm-up; sessions as users) and on the Taobao stream (its first
20% as warm-up). Writes bench/reports/prequential.{md,json,png} (`--quick`:
prequential-quick.*)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPORTS, machine_line, run_record, write_json
from bench.live_replay import CASE_GROUPS, VARIANTS, Plan, curves, load_replay, run
from bench.scenarios.data import TAOBAO, shared
from bench.scenarios.data import YOOCHOOSE_SESSIONS as YOOCHOOSE
from retrain.online_baselines import BLENDS


@dataclass(frozen=True)
class Dataset:
    name: str
    data: Path
    history: Path | None
    describe: str


DATASETS = (
    Dataset(
        "yoochoose",
        YOOCHOOSE / "yoochoose-clicks-100k_test.txt",
        YOOCHOOSE / "yoochoose-clicks-100k_train_full.txt",
        "yoochoose_sessions: warm-up = the 6 training days (train_full), scored = the test day; "
        "a session is a user",
    ),
    Dataset(
        "taobao",
        TAOBAO,
        None,
        "taobao_stream: warm-up = the first 20% of the 2-hour slice, scored = the rest",
    ),
)
QUICK_LIMIT = 2000  # scored events per dataset with --quick


def run_bench(quick: bool = False, limit: int | None = None) -> Path:
    """`limit`: score at most this many events per dataset (`quick`: 2,000)."""
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-bench-prequential-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        for dataset in DATASETS:
            history = shared(dataset.history) if dataset.history else None
            replay = load_replay(
                shared(dataset.data), history, limit=QUICK_LIMIT if quick else limit
            )
            outcome = run(replay, workdir / dataset.name, plan=Plan())
            baselines = {r.variant: r.summary() for r in outcome.baselines}
            results[dataset.name] = {
                "describe": dataset.describe,
                "warmup_events": len(replay.warmup),
                "scored_events": len(replay.scored),
                "variants": {r.variant: r.summary() for r in outcome.variants},
                "baselines": baselines,
                "best_baseline": {m: _best(baselines, m) for m in ("hr20", "mrr20")},
                "best_blend": _best({n: baselines[n] for n in BLENDS if n in baselines}, "hr20"),
                "breakdown": outcome.breakdown(),
                "exposure": outcome.exposure,
                "curves": {r.variant: curves(r) for r in [*outcome.variants, *outcome.baselines]},
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stem = "prequential-quick" if quick else "prequential"
    report = {
        "hr20": _per(results, "hr20"),
        "mrr20": _per(results, "mrr20"),
        "baselines": {n: d["baselines"] for n, d in results.items()},
        "breakdown": {n: d["breakdown"] for n, d in results.items()},
        "exposure": {n: d["exposure"] for n, d in results.items()},
        "retrains": {n: d["variants"]["retrain"]["retrains"] for n, d in results.items()},
        "retrain_seconds": {
            n: d["variants"]["retrain"]["retrain_seconds"] for n, d in results.items()
        },
        "ratios": _ratios(results),
        "below_best_baseline": {n: _below_best(d) for n, d in results.items()},
        "below_any_baseline": {n: _below_best(d, "any") for n, d in results.items()},
        "datasets": results,
        **run_record("streamrec bench prequential", quick, limit, load_before),
    }
    write_json(stem, report)
    _plot(results, REPORTS / f"{stem}.png")
    path = REPORTS / f"{stem}.md"
    path.write_text(_markdown(report, f"{stem}.png"), encoding="utf-8")
    return path


def _best(rows: dict[str, dict[str, Any]], metric: str) -> str | None:
    """The name of the row with the highest `metric`."""
    return max(rows, key=lambda name: rows[name][metric] or 0.0, default=None)


def _per(results: dict[str, dict[str, Any]], metric: str) -> dict[str, dict[str, float]]:
    return {
        name: {v: row[metric] for v, row in data["variants"].items()}
        for name, data in results.items()
    }


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """hit@20 of real-time + retraining over the frozen model and over trending;
    retrain and realtime over the best baseline, by hit@20 and by MRR@20."""
    out = {}
    for name, data in results.items():
        hr = {v: row["hr20"] for v, row in data["variants"].items()}
        ratios = {
            "retrain_over_frozen": _ratio(hr["retrain"], hr["frozen"]),
            "retrain_over_trending": _ratio(hr["retrain"], hr["trending"]),
            "realtime_over_frozen": _ratio(hr["realtime"], hr["frozen"]),
            "retrain_over_realtime": _ratio(hr["retrain"], hr["realtime"]),
        }
        for metric in ("hr20", "mrr20"):
            best = data["best_baseline"][metric]
            for variant in ("retrain", "realtime"):
                ratios[f"{variant}_over_best_baseline_{metric}"] = (
                    _ratio(data["variants"][variant][metric], data["baselines"][best][metric])
                    if best is not None
                    else None
                )
        out[name] = ratios
    return out


def _below_best(data: dict[str, Any], against: str = "best") -> dict[str, dict[str, list[str]]]:
    """For retrain and realtime, per metric: the cases and event types in which
    the best baseline (the goal's: the best one overall by that metric) scores
    higher; `against="any"`: in which any baseline does (the one best in that group)."""
    breakdown = data["breakdown"]
    out: dict[str, dict[str, list[str]]] = {}
    for variant in ("retrain", "realtime"):
        out[variant] = {}
        for metric in ("hr20", "mrr20"):
            best = data["best_baseline"][metric]
            rivals = list(data["baselines"]) if against == "any" else [best] if best else []
            out[variant][metric] = [
                group
                for group, cell in breakdown[variant].items()
                if cell["events"]
                and any(breakdown[b][group][metric] > cell[metric] for b in rivals)
            ]
    return out


def rewrite_markdown(stem: str = "prequential") -> Path:
    """The markdown report again from its JSON, for a report whose layout changed
    after the run (the figures are the JSON's, nothing is measured)."""
    report = json.loads((REPORTS / f"{stem}.json").read_text(encoding="utf-8"))
    for name, data in report["datasets"].items():
        report["below_best_baseline"][name] = _below_best(data)
        report.setdefault("below_any_baseline", {})[name] = _below_best(data, "any")
    write_json(stem, report)
    path = REPORTS / f"{stem}.md"
    path.write_text(_markdown(report, f"{stem}.png"), encoding="utf-8")
    return path


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.6 * len(results)), squeeze=False)
    for row, (name, data) in enumerate(results.items()):
        for col, metric in enumerate(("hr20", "mrr20")):
            best = data["best_baseline"][metric]  # per metric, as the goal reads it
            ax = axes[row][col]
            for variant in data["variants"]:
                curve = data["curves"][variant]
                ax.plot(curve["hours"], curve[metric], marker=".", label=VARIANTS[variant].label)
            if best is not None:
                curve = data["curves"][best]
                ax.plot(
                    curve["hours"], curve[metric], "k--", marker=".",
                    label="best baseline (named in the title)",
                )  # fmt: skip
            shown = "hit@20" if metric == "hr20" else "MRR@20"
            ax.set_title(
                f"{name}: {shown} (%)" + (f"\ndashed: best baseline, {best}" if best else ""),
                fontsize=10,
            )
            ax.set_xlabel("hours into the scored replay (event time)")
            ax.grid(alpha=0.3)
        # One legend per dataset, to the right of its row: never over a curve.
        axes[row][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    REPORTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def replot(stem: str = "prequential") -> None:
    """Draw <stem>.png again from <stem>.json (no new run)."""
    results = json.loads((REPORTS / f"{stem}.json").read_text())["datasets"]
    _plot(results, REPORTS / f"{stem}.png")


def _markdown(report: dict[str, Any], plot: str) -> str:
    m = report["machine"]
    lines = [
        "# Prequential evaluation",
        "",
        f"Command: `{report['command']}`. {machine_line(m)} "
        f"Load average before/after: {report['load_average']['before'][0]:.1f} / "
        f"{report['load_average']['after'][0]:.1f} (other work shared the cores when > 2).",
        "",
        "Each event is replayed in time order through a live pipeline (Kafka → stream "
        "worker → Redis → model server, each variant its own topics, Redis database, "
        "archive and registry): first `POST /recommend` (k = 20) for its user, scored "
        "against the event's item, then the event is sent and applied. The online "
        "baselines (retrain/online_baselines.py) answer the same events in the same "
        "order in-process, each seeing only what the pipeline had seen. See "
        "docs/models.md (Prequential evaluation) for the protocol.",
        "",
        "Goal: real-time + retraining ≥ 1.10× the best baseline on hit@20 and on MRR@20 "
        "(stretch 1.25×); frozen model + real-time state ≥ the best baseline; neither "
        "below the best baseline in any case of the breakdown.",
        "",
    ]
    for name, data in report["datasets"].items():
        lines += _dataset_section(name, data, report)
    lines += [f"![hit@20 and MRR@20 over the replay]({plot})", ""]
    return "\n".join(lines)


def _dataset_section(name: str, data: dict[str, Any], report: dict[str, Any]) -> list[str]:
    best, blend = data["best_baseline"], data["best_blend"]
    lines = [
        f"## {name}",
        "",
        f"{data['describe']}. Warm-up {data['warmup_events']:,} events, "
        f"scored {data['scored_events']:,}.",
        "",
        "| | hit@20 | MRR@20 | answered by trending | errors | events/s | retrains |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["variants"].values():
        trending = row["fallbacks"].get("trending", 0)
        retrains = ", ".join(f"{k} {v}" for k, v in row["retrains"].items() if v) or "-"
        lines.append(
            f"| {row['label']} | {row['hr20']:.2f} | {row['mrr20']:.2f} | "
            f"{100 * trending / max(row['events'], 1):.0f}% | {row['errors']} | "
            f"{row['events_per_s']} | {retrains} |"
        )
    for baseline, row in data["baselines"].items():
        marks = [m for m, flag in (("best hit@20", best["hr20"]), ("best MRR@20", best["mrr20"]),
                                   ("best blend", blend)) if flag == baseline]  # fmt: skip
        mark = f" ({', '.join(marks)})" if marks else ""
        lines.append(
            f"| baseline `{baseline}`{mark} | {row['hr20']:.2f} | {row['mrr20']:.2f} "
            "| - | - | - | - |"
        )
    ratios = report["ratios"][name]
    seconds = report["retrain_seconds"][name]
    below = report["below_best_baseline"][name]
    below_any = report.get("below_any_baseline", {}).get(name)
    lines += [
        "",
        f"Against the best baseline (hit@20: `{best['hr20']}`, MRR@20: `{best['mrr20']}`): "
        f"real-time + retraining {ratios['retrain_over_best_baseline_hr20']}× on hit@20 and "
        f"{ratios['retrain_over_best_baseline_mrr20']}× on MRR@20 (goal ≥ 1.10, stretch "
        f"1.25); real-time state {ratios['realtime_over_best_baseline_hr20']}× and "
        f"{ratios['realtime_over_best_baseline_mrr20']}× (goal ≥ 1). The baselines took "
        f"{sum(row['seconds'] for row in data['baselines'].values()):.0f} s in all.",
        "",
        "Groups of the breakdown where the best baseline (of that metric, as in the goal) "
        "scores higher; in brackets, where a baseline that does best in that group alone "
        "does (for instance `latest` on repeats, `cooc` on new items):",
        "",
        "| | hit@20 | MRR@20 |",
        "|---|---|---|",
    ]
    for variant in ("retrain", "realtime"):
        cells = []
        for metric in ("hr20", "mrr20"):
            cell = ", ".join(below[variant][metric]) or "none"
            if below_any is not None:
                cell += f" ({', '.join(below_any[variant][metric]) or 'none'})"
            cells.append(cell)
        lines.append(f"| {VARIANTS[variant].label} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        f"hit@20 ratios: real-time + retraining / frozen = {ratios['retrain_over_frozen']} "
        f"(goal ≥ 1.2), / trending = {ratios['retrain_over_trending']} (goal ≥ 2); "
        f"real-time state alone / frozen = {ratios['realtime_over_frozen']}; "
        f"retraining on top of real-time state = {ratios['retrain_over_realtime']}. "
        f"Mean retrain cycle: {seconds if seconds is not None else '-'} s.",
        "",
    ]
    breakdown = data["breakdown"]
    groups = next(iter(breakdown.values()))
    for title, names in (
        ("case", [g for g in CASE_GROUPS if g in groups]),
        ("event type", [g for g in groups if g not in CASE_GROUPS]),
    ):  # fmt: skip
        lines += [
            f"hit@20 / MRR@20 by {title} (events in brackets):",
            "",
            "| | " + " | ".join(f"{g} ({groups[g]['events']:,})" for g in names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for result, cells in breakdown.items():
            row = " | ".join(_cell(cells[g]) for g in names)
            lines.append(f"| {result} | {row} |")
        lines.append("")
    return lines + exposure_lines(data.get("exposure", {}))


def exposure_lines(exposure: dict[str, dict[str, float | None]]) -> list[str]:
    """The exposure table (bench.live_replay.exposure_summary), empty without one."""
    if not exposure:
        return []
    lines = [
        "What the answers showed: coverage@20 (share of the replay's items ever in a top 20), "
        "the share of shown slots from outside the 20% most touched items, the Gini of "
        "exposure over the replay's items, and distinct categories per item of a top 20:",
        "",
        "| | coverage@20 % | long tail % | Gini | category diversity % |",
        "|---|---|---|---|---|",
    ]
    for name, row in exposure.items():
        cells = [
            "-" if row[key] is None else f"{row[key]}"
            for key in ("coverage20", "tail_share", "gini", "category_diversity")
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return [*lines, ""]


def _cell(cell: dict[str, Any]) -> str:
    if cell["hr20"] is None:
        return "-"
    return f"{cell['hr20']:.2f} / {cell['mrr20']:.2f}"
