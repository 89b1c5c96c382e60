"""The canary section of the prequential bench, tiny: a few hundred yoochoose events
through the real pipeline with a canary whose ranker reverses the hand blend, judged
by the leader's check on the replay's clock with a low minimum of clicks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.canary import markdown, measure
from bench.live_replay import load_replay
from bench.scenarios.data import DATA
from streamrec.canary import CANARY_ARM, CONTROL_ARM

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SESSIONS = DATA / "yoochoose_sessions"
SCORED = 300


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    replay = load_replay(
        SESSIONS / "yoochoose-clicks-100k_test.txt",
        SESSIONS / "yoochoose-clicks-100k_train_full.txt",
        limit=SCORED,
    )
    # The newest training clicks are history enough for a first model that beats its
    # reversed ranker by far.
    replay = replace(replay, warmup=replay.warmup[-3000:])
    return measure(
        replay,
        tmp_path_factory.mktemp("canary"),
        candidates=("bad",),
        percent=50,
        canary_min_clicks=30,
        retrain_first_epochs=2,
    )


def test_a_clearly_bad_canary_is_rolled_back_before_the_end(report: dict[str, Any]) -> None:
    bad = report["canaries"]["bad"]
    assert bad["decision"] == "rolled_back", bad
    assert 0 < bad["events_until_decision"] < SCORED
    online = bad["online_at_decision"]
    assert min(online[CONTROL_ARM]["clicks"], online[CANARY_ARM]["clicks"]) >= 30
    assert online[CANARY_ARM]["hit_rate"] < online[CONTROL_ARM]["hit_rate"]
    assert bad["bounds"]["upper"] < -100 * report["rule"]["margin"]
    assert bad["errors"] == 0 and bad["checks"] >= 1


def test_the_report_holds_the_decision_beside_the_whole_replay(
    report: dict[str, Any], tmp_path: Path
) -> None:
    bad = report["canaries"]["bad"]
    assert set(report["alone"]) == {CONTROL_ARM, "bad"}
    assert all(row["events"] == SCORED and row["errors"] == 0 for row in report["alone"].values())
    # Alone over the whole replay, the reversed ranker is worse too: the decision agrees.
    assert bad["whole_replay_truth"] == "worse" and bad["agrees"] is True
    during = bad["hr20_by_arm_during_experiment"]
    assert during[CONTROL_ARM]["events"] > 0 and during[CANARY_ARM]["events"] > 0
    for key in ("version", "experiment", "reason", "event_hours_until_decision"):
        assert bad[key] is not None
    machine = {"cpu": "x", "cores": 2, "memory_gib": 1, "python": "3", "date": "d", "commit": "c"}
    load = {"before": [0.0], "after": [0.0]}
    page = markdown(report | {"command": "test", "machine": machine, "load_average": load})
    assert "| bad | rolled_back |" in page
