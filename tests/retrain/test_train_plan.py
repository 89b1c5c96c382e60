"""One training plan from Settings: every serving-side setting that shapes what a
request looks like reaches every trainer, so a changed setting never leaves training
on the old value (the skew issue 14 found in `streamrec retrain`)."""

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from retrain.cycle import cycle_plan
from retrain.training import TrainPlan, train_plan
from streamrec.covis import CovisRule
from streamrec.settings import Settings

CHANGED: dict[str, Any] = {
    "popularity_half_life_s": 1800.0,
    "recent_events_max": 30,
    "retrieval_candidates": 150,
    "covis_window": 3,
    "covis_neighbours_max": 20,
    "covis_half_life_s": 3600.0,
    "covis_backward": 0.25,
    "covis_read_items": 7,
}


def _assert_follows(plan: TrainPlan) -> None:
    assert plan.half_life_s == 1800.0
    assert plan.max_len == 30
    assert plan.candidates == 150
    assert plan.covis == CovisRule(window=3, max_neighbours=20, half_life_s=3600.0, backward=0.25)
    assert plan.covis_read_items == 7


def test_every_trainer_follows_the_serving_settings() -> None:
    settings = Settings(**CHANGED)
    _assert_follows(train_plan(settings))  # streamrec train, eval offline, bench offline
    _assert_follows(cycle_plan(settings, first=True))  # streamrec retrain, the harnesses
    _assert_follows(cycle_plan(settings, first=False))


def test_default_settings_give_the_default_plan() -> None:
    """Benchmarks pin their plan through the defaults: with default settings the plan
    is exactly TrainPlan's, so their figures do not move."""
    assert train_plan(Settings()) == TrainPlan()


def test_a_trainer_choice_overrides_only_itself() -> None:
    plan = train_plan(Settings(**CHANGED), dim=32, split="sequences")
    assert plan.dim == 32 and plan.split == "sequences"
    _assert_follows(plan)


def test_cycle_plan_takes_the_retrain_settings() -> None:
    settings = Settings(
        retrain_first_epochs=5, retrain_epochs=1, retrain_negatives=64, retrain_holdout_fraction=0.2
    )
    first, warm = cycle_plan(settings, first=True), cycle_plan(settings, first=False)
    assert (first.encoder.epochs, warm.encoder.epochs) == (5, 1)
    assert first.encoder.negatives == warm.encoder.negatives == 64
    assert first.holdout_fraction == 0.2


def test_streamrec_train_follows_the_serving_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`streamrec train` builds its plan from the same settings; the published
    manifest records the plan it trained with."""
    events = tmp_path / "events.jsonl"
    with events.open("w") as handle:
        for user in range(300):
            for step in range(4):
                body = {
                    "event_id": f"u{user}-{step}",
                    "user_id": f"u{user}",
                    "item_id": f"i{(user * 7 + step * 3) % 60}",
                    "type": "click",
                    "ts": 1_700_000_000_000 + user * 10_000 + step * 1000,
                }
                handle.write(json.dumps(body) + "\n")
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    for name, value in CHANGED.items():
        monkeypatch.setenv(f"STREAMREC_{name.upper()}", str(value))
    runner = CliRunner()
    trained = runner.invoke(
        app, ["train", "--data", str(events), "--epochs", "1", "--dim", "16", "--quiet"]
    )
    assert trained.exit_code == 0, trained.output
    version = runner.invoke(app, ["model", "current"]).output.strip()
    plan = json.loads(runner.invoke(app, ["model", "show", version]).output)["training"]["plan"]
    assert plan["half_life_s"] == 1800.0 and plan["max_len"] == 30 and plan["candidates"] == 150
    assert plan["covis"] == {
        "window": 3,
        "max_neighbours": 20,
        "half_life_s": 3600.0,
        "backward": 0.25,
    }
    assert plan["covis_read_items"] == 7
