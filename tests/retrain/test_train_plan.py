"""One training plan from Settings: every serving-side setting that shapes what a
request looks like reaches every trainer, so a changed setting never leaves training
on the old value (the skew issue 14 found in `streamrec retrain`)."""

from retrain.cycle import cycle_plan
from retrain.pipeline import TrainPlan, train_plan
from streamrec.covis import CovisRule
from streamrec.settings import Settings

CHANGED = {
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
