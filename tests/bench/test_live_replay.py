"""The prequential replay on the real parts: its own broker and Redis, workers,
servers, a first model trained by a retrain cycle, the four variants; and the
online baselines and the breakdown by case beside them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.live_replay import (
    CASES,
    COLD,
    UNSEEN,
    VARIANTS,
    Plan,
    PrequentialRun,
    VariantResult,
    curves,
    load_replay,
    run,
)
from bench.scenarios.data import DATA, TAOBAO
from retrain.online_baselines import BASELINES
from streamrec.errors import InputFormatError

# The module's fixture runs four pipelines, each with its worker and server.
pytestmark = pytest.mark.slow

SESSIONS = DATA / "yoochoose_sessions"
SCORED = 300
Results = dict[str, VariantResult]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> PrequentialRun:
    replay = load_replay(
        SESSIONS / "yoochoose-clicks-100k_test.txt",
        SESSIONS / "yoochoose-clicks-100k_train_full.txt",
        limit=SCORED,
    )
    # The newest 5,000 training clicks are enough history for a first model (each of
    # the four variants replays them through its worker: 15,000 took minutes).
    replay = replace(replay, warmup=replay.warmup[-5_000:])
    plan = Plan(retrain_every_events=100, train_epochs=1)
    return run(replay, tmp_path_factory.mktemp("prequential"), plan=plan)


@pytest.fixture(scope="module")
def results(outcome: PrequentialRun) -> Results:
    return {r.variant: r for r in outcome.variants}


def test_every_variant_scores_every_event_without_errors(results: Results) -> None:
    assert set(results) == {"trending", "frozen", "realtime", "retrain"}
    for result in results.values():
        assert len(result.hits) == SCORED and result.errors == 0
        assert sum(result.fallbacks.values()) == SCORED
        assert set(np.unique(result.hits)) <= {0.0, 1.0}
        # A reciprocal rank is there exactly when the item was in the top 20.
        assert np.array_equal(result.reciprocal_ranks > 0, result.hits > 0)


def test_trending_and_frozen_answer_new_sessions_from_trending(
    results: Results,
) -> None:
    assert results["trending"].fallbacks == {"trending": SCORED}
    # The test day's sessions never reached a frozen pipeline: it knows none of them.
    assert results["frozen"].fallbacks == {"trending": SCORED}


def test_real_time_state_is_what_makes_the_model_answer(results: Results) -> None:
    realtime, frozen = results["realtime"], results["frozen"]
    # After its first click a session is known, so the model answers from then on.
    assert realtime.fallbacks["none"] > SCORED // 2
    assert realtime.hits.mean() > frozen.hits.mean()
    assert results["retrain"].hits.mean() > frozen.hits.mean()


def test_curves_cover_the_replay_in_time_order(results: Results) -> None:
    curve = curves(results["realtime"], bins=5)
    assert len(curve["hr20"]) == 5 and curve["hours"] == sorted(curve["hours"])
    assert np.isclose(np.mean(curve["hr20"]), 100 * results["realtime"].hits.mean(), atol=0.01)


def test_every_baseline_scores_the_same_replay_beside_the_variants(
    outcome: PrequentialRun,
) -> None:
    assert [b.variant for b in outcome.baselines] == list(BASELINES)
    for baseline in outcome.baselines:
        assert len(baseline.hits) == SCORED
        assert np.array_equal(baseline.reciprocal_ranks > 0, baseline.hits > 0)
        assert np.array_equal(baseline.ts_ms, outcome.variants[0].ts_ms)
        assert len(curves(baseline, bins=5)["hr20"]) == 5
    # A session's few items fit in 20: the latest items find nearly every repeat.
    assert outcome.breakdown()["latest"]["repeat"]["hr20"] > 90


def test_the_breakdown_covers_every_variant_and_baseline_with_the_same_cases(
    outcome: PrequentialRun,
) -> None:
    breakdown = outcome.breakdown()
    assert set(breakdown) == set(VARIANTS) | set(BASELINES)
    counts = {
        name: [groups[case]["events"] for case in CASES] for name, groups in breakdown.items()
    }
    assert sum(counts["frozen"]) == SCORED and len({tuple(c) for c in counts.values()}) == 1
    # The yoochoose sessions are clicks only; cold items: those the first model lacks;
    # unseen items: touched for the first time by the event scored.
    assert all(set(groups) == {*CASES, COLD, UNSEEN, "click"} for groups in breakdown.values())
    assert outcome.cold is not None and outcome.unseen is not None
    assert {groups[COLD]["events"] for groups in breakdown.values()} == {int(outcome.cold.sum())}
    # An item nobody touched is one no model has seen, and no baseline can show.
    assert not (outcome.unseen & ~outcome.cold).any()
    for baseline in BASELINES:
        assert breakdown[baseline][UNSEEN]["hr20"] == 0.0
    overall = outcome.variants[0].summary()["hr20"]
    parts = breakdown[outcome.variants[0].variant]
    assert overall == pytest.approx(
        sum(parts[c]["events"] * parts[c]["hr20"] for c in CASES) / SCORED, abs=0.01
    )


def test_baselines_alone_start_no_pipeline(tmp_path: Path) -> None:
    replay = load_replay(TAOBAO, limit=300)
    alone = run(replay, tmp_path, variants=(), baselines=["latest", "vsknn"])
    assert alone.variants == [] and [b.variant for b in alone.baselines] == ["latest", "vsknn"]
    assert not (tmp_path / "stack").exists()


def test_warm_up_is_the_first_fifth_without_history_and_times_end_now(tmp_path: Path) -> None:
    replay = load_replay(TAOBAO, limit=500)
    assert len(replay.warmup) == 96_168 // 5 and len(replay.scored) == 500
    times = [e.ts_ms for e in [*replay.warmup, *replay.scored]]
    assert times == sorted(times)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputFormatError):
        load_replay(empty)


def test_rounds_keep_each_users_events_in_order_and_every_event_once() -> None:
    from bench.live_replay import _rounds
    from streamrec.events import Event, EventType

    users = ["a", "b", "a", "c", "a", "b"]
    events = [Event(f"e{i}", u, f"i{i}", EventType.CLICK, i) for i, u in enumerate(users)]
    rounds = _rounds(events, 0, len(events))
    assert [[i for i, _ in step] for step in rounds] == [[0, 1, 3], [2, 5], [4]]
    assert all(len({e.user_id for _, e in step}) == len(step) for step in rounds)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--data", "no/such/events.csv"], "expected an event file at no/such/events.csv"),
        (["--data", str(TAOBAO), "--limit", "10", "--variants", "trending,best"], "unknown"),
        (["--data", str(TAOBAO), "--limit", "10", "--baselines", "latest,pop"], "unknown"),
    ],
)
def test_the_command_refuses_bad_input_in_one_line(args: list[str], says: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "prequential", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert says in done.stderr and "Traceback" not in done.stderr


def test_the_command_scores_baselines_alone_with_variants_none(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "baselines.json"
    args = ["--data", str(TAOBAO), "--limit", "300", "--variants", "none", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "prequential", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "by case" in done.stdout and "no_history" in done.stdout
    report = json.loads(out.read_text())
    assert report["variants"] == {} and set(report["baselines"]) == set(BASELINES)
    assert set(report["breakdown"]["latest"]) >= set(CASES)
