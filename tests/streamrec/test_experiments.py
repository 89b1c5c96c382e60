"""Experiments: the record in the registry (one at a time, checked, written and taken
away atomically) and the assignment (sticky, close to the weights)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from bench.scenarios.models import publish, serving_models
from streamrec import experiments, lineage, registry
from streamrec.errors import BundleError, ExperimentError
from streamrec.experiments import CURRENT_ARM, Arm, new_experiment, parse_arm


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A registry with a current version and a second one beside it."""
    root = tmp_path_factory.mktemp("experiments") / "registry"
    models = serving_models()
    first = publish(models, root).version
    second = publish(models, root, first, make_current=False).version
    return root, first, second


@pytest.fixture
def root(two_versions: tuple[Path, str, str]) -> Path:
    path = two_versions[0]
    (path / registry.EXPERIMENT).unlink(missing_ok=True)
    (path / registry.EXPERIMENT_LOG).unlink(missing_ok=True)
    for version in two_versions[1:]:
        (path / version / lineage.LINEAGE).unlink(missing_ok=True)
    return path


def split(control: float = 90, candidate: float = 10, version: str = "v2") -> list[Arm]:
    return [Arm("control", CURRENT_ARM, control), Arm("candidate", version, candidate)]


def test_the_same_user_always_gets_the_same_arm() -> None:
    experiment = new_experiment("ranker-b", split())
    again = experiments.Experiment.from_dict(experiment.to_dict(), "round trip")
    for n in range(2_000):
        user = f"user-{n}"
        assert experiment.arm_of(user) == experiment.arm_of(user) == again.arm_of(user)
    # A fixed hash, not Python's per-process one: pinned, since a change would
    # reshuffle every running experiment's users between releases.
    assert experiments.bucket_of("s", "alice") == experiments.bucket_of("s", "alice")
    assert [experiments.bucket_of("s", u) for u in ("alice", "bob")] == [2499, 4789]


def test_the_split_is_close_to_the_weights() -> None:
    """Chi-square over 100,000 ids against 70/20/10: below the 0.1% critical value
    for 2 degrees of freedom (13.82); and another salt reshuffles the users."""
    arms = [Arm("a", CURRENT_ARM, 70), Arm("b", "v2", 20), Arm("c", "v3", 10)]
    experiment = new_experiment("three", arms, salt="s1")
    users = [f"u{n}" for n in range(100_000)]
    counts = {arm.name: 0 for arm in arms}
    for user in users:
        counts[experiment.arm_of(user).name] += 1
    expected = {"a": 70_000, "b": 20_000, "c": 10_000}
    chi_square = sum((counts[a] - e) ** 2 / e for a, e in expected.items())
    assert chi_square < 13.82, counts
    other = new_experiment("three", arms, salt="s2")
    moved = sum(experiment.arm_of(u) != other.arm_of(u) for u in users[:10_000])
    # Independent splits: P(different) = 1 - (0.7² + 0.2² + 0.1²) = 0.46.
    assert 4_300 < moved < 4_900


def test_weights_are_relative_and_buckets_exact() -> None:
    experiment = new_experiment("halves", [Arm("a", CURRENT_ARM, 1), Arm("b", "v2", 1)])
    assert experiment.bounds == (5_000, 10_000)
    assert new_experiment("x", split(99.99, 0.01)).bounds == (9_999, 10_000)


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ([Arm("a", CURRENT_ARM, 1)], "at least two arms"),
        ([Arm("a", CURRENT_ARM, 1), Arm("a", "v2", 1)], "unique; 'a' comes twice"),
        ([Arm("a", CURRENT_ARM, 1), Arm("b", "v2", 0)], "above 0"),
        ([Arm("a", CURRENT_ARM, 1), Arm("b", "v2", -3)], "above 0"),
        ([Arm("a", CURRENT_ARM, 1), Arm("b", "v2", float("nan"))], "above 0"),
        ([Arm("a", CURRENT_ARM, 1), Arm("b", "../v2", 1)], "not a version name"),
        ([Arm("a", CURRENT_ARM, 1), Arm("b c", "v2", 1)], "arm name 'b c'"),
        ([Arm("a", CURRENT_ARM, 100_000), Arm("b", "v2", 1)], "weighs too little"),
    ],
)
def test_invalid_experiments_say_why(arms: list[Arm], message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        new_experiment("e", arms)


def test_names_and_salts_are_checked() -> None:
    with pytest.raises(ExperimentError, match="a name must match"):
        new_experiment("has space", split())
    with pytest.raises(ExperimentError, match="salt"):
        new_experiment("e", split(), salt="")


def test_arms_parse_from_the_command_line_form() -> None:
    assert parse_arm("control=current:90") == Arm("control", "current", 90.0)
    assert parse_arm("b=v20261206T101010Z-abc123:2.5") == Arm("b", "v20261206T101010Z-abc123", 2.5)
    for bad in ("control", "control=current", "=v2:3", "b=v2:ten"):
        with pytest.raises(ExperimentError, match=r"NAME=VERSION:WEIGHT|must be a number"):
            parse_arm(bad)


def test_start_read_stop_one_at_a_time(root: Path, two_versions: tuple[Path, str, str]) -> None:
    _, _, second = two_versions
    assert experiments.read(root) is None
    started = experiments.start(root, new_experiment("b-test", split(version=second)))
    assert experiments.read(root) == started
    # Not a version: the registry's listing skips the record and the log.
    assert registry.list_registry(root).unreadable == {}
    with pytest.raises(ExperimentError, match="'b-test' runs; stop or promote it first"):
        experiments.start(root, new_experiment("another", split(version=second)))
    assert experiments.stop(root) == started
    assert experiments.read(root) is None
    with pytest.raises(ExperimentError, match="no experiment runs"):
        experiments.stop(root)
    actions = [(line["action"], line["experiment"]) for line in experiments.history(root)]
    assert actions == [("started", "b-test"), ("stopped", "b-test")]


def test_two_starts_at_once_one_wins(root: Path, two_versions: tuple[Path, str, str]) -> None:
    _, _, second = two_versions
    outcomes: list[str] = []

    def start(name: str) -> None:
        try:
            experiments.start(root, new_experiment(name, split(version=second)))
            outcomes.append("started")
        except ExperimentError:
            outcomes.append("refused")

    threads = [threading.Thread(target=start, args=(f"e{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["started"]


def test_versions_must_be_in_the_registry(root: Path) -> None:
    with pytest.raises(ExperimentError, match="arm 'candidate': no bundle 'v-missing'"):
        experiments.start(root, new_experiment("e", split(version="v-missing")))
    assert experiments.read(root) is None


def test_promote_moves_current_then_ends(root: Path, two_versions: tuple[Path, str, str]) -> None:
    _, first, second = two_versions
    experiments.start(root, new_experiment("e", split(version=second)))
    try:
        experiment, version = experiments.promote(root, "candidate")
        assert (experiment.name, version) == ("e", second)
        assert registry.current_version(root) == second
        assert experiments.read(root) is None
        assert experiments.history(root)[-1] | {"at": None} == {
            "at": None,
            "action": "promoted",
            "experiment": "e",
            "run_id": experiment.run_id,
            "arm": "candidate",
            "version": second,
            "by": "manual",
        }
        # Promoting the arm that follows CURRENT ends it and moves nothing.
        experiments.start(root, new_experiment("f", split(version=first)))
        assert experiments.promote(root, "control")[1] == second
        assert registry.current_version(root) == second
        with pytest.raises(ExperimentError, match="no experiment runs"):
            experiments.promote(root, "control")
    finally:
        registry.set_current(root, first)


def test_manual_stop_and_promote_are_written_to_the_versions_lineage(
    root: Path, two_versions: tuple[Path, str, str]
) -> None:
    """What becomes of a version an arm pins: started, stopped, started, promoted,
    each a line of its LINEAGE.jsonl (the arm following CURRENT writes none); the
    bundle still verifies (no listed file changed)."""
    _, first, second = two_versions
    one = experiments.start(root, new_experiment("one", split(version=second)))
    experiments.stop(root)
    two = experiments.start(root, new_experiment("two", split(version=second)))
    try:
        experiments.promote(root, "candidate")
        entries = [entry | {"at": None} for entry in lineage.read(root, second)]
        common = {"at": None, "arm": "candidate", "share": 0.1}
        assert entries == [
            common | {"action": "started", "experiment": "one", "run_id": one.run_id},
            common | {"action": "stopped", "experiment": "one", "run_id": one.run_id,
                      "by": "manual"},
            common | {"action": "started", "experiment": "two", "run_id": two.run_id},
            common | {"action": "promoted", "experiment": "two", "run_id": two.run_id,
                      "by": "manual", "version": second},
        ]  # fmt: skip
        assert lineage.read(root, first) == []
        registry.verify(root, second)
    finally:
        registry.set_current(root, first)


def test_a_refused_promotion_changes_nothing(
    root: Path, two_versions: tuple[Path, str, str]
) -> None:
    _, first, _ = two_versions
    bad = publish(serving_models(), root, first, make_current=False).version
    (root / bad / "ranker.onnx").write_bytes(b"not onnx")
    running = experiments.start(root, new_experiment("e", split(version=bad)))
    with pytest.raises(BundleError):
        experiments.promote(root, "candidate")
    assert experiments.read(root) == running
    assert registry.current_version(root) == first
    with pytest.raises(ExperimentError, match="has no arm 'nope'"):
        experiments.promote(root, "nope")


def test_stop_of_another_run_puts_it_back(root: Path, two_versions: tuple[Path, str, str]) -> None:
    _, _, second = two_versions
    running = experiments.start(root, new_experiment("e", split(version=second)))
    resolved = new_experiment("e-old", split(version=second))
    with pytest.raises(ExperimentError, match="nothing changed"):
        experiments.stop(root, resolved)
    assert experiments.read(root) == running


def test_a_damaged_record_is_an_error_not_a_crash(root: Path) -> None:
    (root / registry.EXPERIMENT).write_text("{")
    with pytest.raises(ExperimentError, match="not valid JSON"):
        experiments.read(root)
    (root / registry.EXPERIMENT).write_text(json.dumps({"name": "e"}))
    with pytest.raises(ExperimentError, match="not an experiment record"):
        experiments.read(root)


def test_wilson_interval_against_published_values() -> None:
    """Wilson's 95% interval, as tabulated (Newcombe 1998, table I): 0/10 is
    0-0.2775, 5/10 is 0.2366-0.7634; no trials say nothing."""
    assert experiments.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert experiments.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = experiments.wilson_interval(45, 300)
    assert low < 45 / 300 < high and high - low == pytest.approx(0.0808, abs=1e-4)
    assert experiments.wilson_interval(0, 0) == (0.0, 1.0)
