"""One retraining cycle on real sessions through the archive: the vocabulary grows,
the gate refuses a worse model, a crash leaves the registry as it was."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.scenarios.data import yoochoose_sessions
from bench.scenarios.models import TINY_PLAN
from retrain import cycle, training
from retrain.cycle import run_cycle
from retrain.train_encoder import EncoderTraining
from retrain.vocab import ItemVocab
from streamrec import registry
from streamrec.archive import ArchivedEvent, ArchiveWriter, record_forget
from streamrec.errors import BundleError
from streamrec.events import Event, EventType
from streamrec.settings import Settings

T0 = datetime(2026, 11, 1, tzinfo=UTC)
OLD, NEW = slice(0, 1500), slice(1500, 2400)


def archive_sessions(root: Path, which: slice, arrived: datetime) -> int:
    """Real yoochoose sessions as archived click events, in session order."""
    writer = ArchiveWriter(root, writer_id="test")
    records: list[ArchivedEvent] = []
    for number, session in enumerate(yoochoose_sessions(which.stop)[which], start=which.start):
        for step, item_id in enumerate(session.item_ids):
            ts_ms = int(arrived.timestamp() * 1000) + number * 100 + step
            event = Event(
                f"{session.user_id}-{step}", session.user_id, item_id, EventType.CLICK, ts_ms
            )
            records.append(ArchivedEvent(event, "clicks", 0, len(records), ts_ms))
    writer.append(records)
    writer.close()
    return len(records)


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    settings = make_settings(
        "cycle", registry=tmp_path / "registry", archive_dir=tmp_path / "archive",
        retrain_min_events=100, retrain_tolerance=100.0,
    )  # fmt: skip
    archive_sessions(settings.archive_root, OLD, T0)
    first = run_cycle(settings, TINY_PLAN, now=T0 + timedelta(hours=1))
    assert first.outcome == "published" and first.parent is None
    return settings


def test_a_cycle_warm_starts_grows_the_vocabulary_and_records_its_window(
    settings: Settings,
) -> None:
    root = settings.registry
    parent = registry.current_version(root)
    assert parent is not None
    skipped = run_cycle(settings, TINY_PLAN, now=T0 + timedelta(hours=2))
    assert skipped.outcome == "skipped"  # nothing arrived since the parent's window

    new_events = archive_sessions(settings.archive_root, NEW, T0 + timedelta(hours=2))
    result = run_cycle(settings, TINY_PLAN, now=T0 + timedelta(hours=3))
    assert result.outcome == "published", result.reason
    assert (result.parent, result.new_events) == (parent, new_events)
    assert registry.current_version(root) == result.version

    old_vocab = ItemVocab.load(root / parent / "vocab.json")
    new_vocab = ItemVocab.load(root / str(result.version) / "vocab.json")
    assert new_vocab.item_ids[: len(old_vocab)] == old_vocab.item_ids  # old rows kept
    assert len(new_vocab) > len(old_vocab)  # the new window brought new items
    manifest = registry.read_manifest(root, str(result.version))
    assert manifest.parent == parent
    window = manifest.data_window
    assert window["archive_since_ms"] == int((T0 + timedelta(hours=1)).timestamp() * 1000)
    assert window["new_events"] == new_events and window["replay_events"] > 0
    assert window["offsets"] == {"clicks:0": [0, new_events - 1]}
    assert {"candidate", "serving"} <= set(window["gate"])


def test_the_gate_refuses_a_worse_model_and_the_serving_version_stays(settings: Settings) -> None:
    root = settings.registry
    before = [m.version for m in registry.list_versions(root)]
    archive_sessions(settings.archive_root, NEW, T0 + timedelta(hours=2))
    # A cold start that barely learns: deliberately worse than the serving version.
    crippled = replace(TINY_PLAN, encoder=EncoderTraining(epochs=1, batch_size=128, lr=1e-9))
    strict = settings.model_copy(update={"retrain_tolerance": 0.0})
    result = run_cycle(strict, crippled, now=T0 + timedelta(hours=3), warm_start=False)
    assert result.outcome == "rejected", result.metrics
    assert result.metrics["candidate"]["mrr20"] < result.metrics["serving"]["mrr20"]
    assert [m.version for m in registry.list_versions(root)] == before
    assert registry.current_version(root) == before[-1]


def test_a_crash_mid_publish_leaves_the_registry_as_it_was(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = settings.registry
    before = sorted(p.name for p in root.iterdir())
    current = registry.current_version(root)
    archive_sessions(settings.archive_root, NEW, T0 + timedelta(hours=2))

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr("retrain.publish.export_ranker", crash)
    with pytest.raises(RuntimeError, match="mid-export"):
        run_cycle(settings, TINY_PLAN, now=T0 + timedelta(hours=3))
    assert sorted(p.name for p in root.iterdir()) == before
    assert registry.current_version(root) == current
    assert cycle.GATE_METRICS == ("p20", "mrr20")


def _measured(p20: float, mrr20: float, repeat: tuple[float, float, int]) -> dict[str, Any]:
    return {
        "p20": p20, "mrr20": mrr20, "cases": 1000,
        "by_case": {
            "repeat": {"p20": repeat[0], "mrr20": repeat[1], "cases": repeat[2]},
            "new_item": {"p20": 40.0, "mrr20": 15.0, "cases": 700},
        },
    }  # fmt: skip


def test_the_gate_refuses_a_version_that_loses_the_repeats_on_a_better_average() -> None:
    serving = _measured(60.0, 30.0, (99.0, 85.0, 300))
    better_on_average = _measured(61.0, 30.5, (99.0, 80.0, 300))
    (failure,) = cycle.gate_failures(better_on_average, serving, tolerance=0.5)
    assert failure.startswith("repeat mrr20: new 80.00 < serving 85.00")
    assert cycle.gate_failures(serving, serving, tolerance=0.5) == []
    # A case measured on too few cases does not hold a version back.
    few = _measured(61.0, 30.5, (99.0, 80.0, cycle.GATE_MIN_CASES - 1))
    assert cycle.gate_failures(few, serving, tolerance=0.5) == []
    # Overall hit@20 counts as much as MRR@20.
    assert cycle.gate_failures(_measured(58.0, 30.0, (99.0, 85.0, 300)), serving, 0.5) == [
        "all p20: new 58.00 < serving 60.00 - tolerance 0.5"
    ]


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("retrain.publish.tempfile.mkdtemp", PermissionError(13, "Permission denied")),
        ("retrain.publish.export_ranker", OSError(28, "No space left on device")),
    ],
)
def test_an_unwritable_registry_is_a_clear_error_and_nothing_half_written(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, target: str, error: OSError
) -> None:
    root = settings.registry
    before = sorted(p.name for p in root.iterdir())
    current = registry.current_version(root)
    archive_sessions(settings.archive_root, NEW, T0 + timedelta(hours=2))

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(target, fail)
    with pytest.raises(BundleError, match=f"registry at {root}.*{error.strerror}"):
        run_cycle(settings, TINY_PLAN, now=T0 + timedelta(hours=3))
    assert sorted(p.name for p in root.iterdir()) == before
    assert registry.current_version(root) == current


def test_the_command_reports_a_skipped_cycle_as_json(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import orjson

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env |= {"STREAMREC_HOME": str(tmp_path), "STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "retrain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "skipped" and result["new_events"] == 0


def test_the_next_bundle_never_sees_a_forgotten_user_and_names_the_forget_horizon(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user forgotten before a cycle is absent from its training set (the window and
    the replay sample), from every file of the bundle, and the manifest says up to
    which forget the read honoured."""
    archive_sessions(settings.archive_root, NEW, T0 + timedelta(hours=2))
    sessions = yoochoose_sessions(NEW.stop)
    # One of the new window, one of the replay sample; ids long enough that finding
    # their bytes in a binary file is no accident.
    forgotten_users = [sessions[NEW.start].user_id, sessions[OLD.start + 1000].user_id]
    writer = ArchiveWriter(settings.archive_root, writer_id="worker")
    applied_ms = int((T0 + timedelta(hours=2, minutes=30)).timestamp() * 1000)
    for user_id in forgotten_users:
        record_forget(writer, user_id, applied_ms)
    seen: list[str] = []
    real_train = training.train_models

    def train_and_watch(sequences: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend(s.user_id for s in sequences)
        return real_train(sequences, *args, **kwargs)

    monkeypatch.setattr(cycle, "train_models", train_and_watch)
    everyone = settings.model_copy(update={"retrain_replay_fraction": 1.0})
    result = run_cycle(everyone, TINY_PLAN, now=T0 + timedelta(hours=3))
    assert result.outcome == "published", result.reason
    assert seen and not set(forgotten_users) & set(seen)
    assert sessions[NEW.start + 1].user_id in seen  # the others are there
    window = registry.read_manifest(settings.registry, str(result.version)).data_window
    assert (window["forgets_applied"], window["last_forget_applied_ms"]) == (2, applied_ms)
    bundle = settings.registry / str(result.version)
    for path in bundle.iterdir():
        content = path.read_bytes()
        assert not any(user_id.encode() in content for user_id in forgotten_users), path.name
    writer.close()


def test_a_canary_cycle_publishes_an_arm_not_current_and_waits_while_one_runs(
    settings: Settings,
) -> None:
    """`retrain --canary 10`: the version is published, CURRENT stays, and an
    experiment `canary-<version>` gives it 10% of users; while it runs the next
    canary cycle is skipped before training."""
    from streamrec import experiments, lineage

    root = settings.registry
    parent = registry.current_version(root)
    archive_sessions(settings.archive_root, NEW, T0 + timedelta(hours=2))
    result = run_cycle(settings, TINY_PLAN, now=T0 + timedelta(hours=3), canary_percent=10)
    assert result.outcome == "published", result.reason
    assert registry.current_version(root) == parent
    running = experiments.read(root)
    assert running is not None and running.name == f"canary-{result.version}"
    assert [(a.name, a.version, a.weight) for a in running.arms] == [
        ("control", "current", 90),
        ("canary", result.version, 10),
    ]
    assert result.canary == {"experiment": running.name, "run_id": running.run_id, "percent": 10}
    assert orjson.loads(result.to_json())["canary"] == result.canary  # the outcome line
    assert [e["action"] for e in lineage.read(root, str(result.version))] == ["started"]

    again = run_cycle(settings, TINY_PLAN, now=T0 + timedelta(hours=4), canary_percent=10)
    assert again.outcome == "skipped" and running.name in again.reason
    assert experiments.read(root) == running


def test_a_first_version_has_no_control_and_is_published_as_current(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from streamrec import experiments

    settings = make_settings(
        "cycle-first", registry=tmp_path / "registry", archive_dir=tmp_path / "archive",
        retrain_min_events=100,
    )  # fmt: skip
    archive_sessions(settings.archive_root, OLD, T0)
    first = run_cycle(settings, TINY_PLAN, now=T0 + timedelta(hours=1), canary_percent=10)
    assert (first.outcome, first.reason, first.canary) == ("published", "first version", None)
    assert registry.current_version(settings.registry) == first.version
    assert experiments.read(settings.registry) is None
