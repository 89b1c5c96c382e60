"""`streamrec train` and `streamrec model ...` end to end on a small real slice."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.scenarios.data import yoochoose_sessions
from cli import app
from retrain.data import read_sequences
from streamrec import registry
from streamrec.event_files import bad_row_message, read_events
from streamrec.events import Rejection
from tests.retrain.session_events import write_session_events


def test_train_publishes_and_model_commands_read_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = write_session_events(tmp_path / "events.jsonl", 300)
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    runner = CliRunner()

    trained = runner.invoke(
        app, ["train", "--data", str(events), "--epochs", "1", "--dim", "16", "--quiet"]
    )
    assert trained.exit_code == 0, trained.output
    first = runner.invoke(app, ["model", "current"]).output.strip()
    assert "published " + first in trained.output

    # Asked to, a second run warm-starts from the first and names it as parent.
    again = runner.invoke(
        app,
        ["train", "--data", str(events), "--epochs", "1", "--dim", "16", "--quiet", "--warm-start"],
    )
    assert again.exit_code == 0, again.output
    assert f"warm start from {first}" in again.output
    second = runner.invoke(app, ["model", "current"]).output.strip()
    shown = json.loads(runner.invoke(app, ["model", "show", second]).output)
    assert shown["parent"] == first and shown["data_window"]["format"] == "jsonl"

    listed = runner.invoke(app, ["model", "list"]).output
    assert first in listed and f"* {second}" in listed
    assert runner.invoke(app, ["model", "verify", second]).exit_code == 0
    rolled = runner.invoke(app, ["model", "rollback"])
    assert rolled.exit_code == 0 and first in rolled.output

    (tmp_path / "registry" / first / "vocab.json").write_text('{"item_ids": []}')
    refused = runner.invoke(app, ["model", "verify", first])
    assert refused.exit_code == 1 and "refused" in refused.output


def _events_with_a_bad_row(path: Path) -> int:
    """Write 200 sessions' clicks as JSONL into `path` with one bad row; its line number."""
    lines = [
        json.dumps(
            {
                "event_id": f"{sequence.user_id}-{step}",
                "user_id": sequence.user_id,
                "item_id": item_id,
                "type": "click",
                "ts": 1_700_000_000_000 + step * 1000,
            }
        )
        for sequence in yoochoose_sessions(200)
        for step, item_id in enumerate(sequence.item_ids)
    ]
    bad_line = 10
    lines.insert(bad_line - 1, json.dumps({"event_id": "x", "user_id": "u", "type": "click"}))
    path.write_text("\n".join(lines) + "\n")
    return bad_line


def test_train_skips_and_counts_bad_rows_and_says_what_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A .json file holding JSONL: once read as CSV by `train`, as JSONL by `produce`.
    events = tmp_path / "events.json"
    bad_line = _events_with_a_bad_row(events)
    expected = read_sequences(events)
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    trained = CliRunner().invoke(
        app, ["train", "--data", str(events), "--epochs", "1", "--dim", "16", "--quiet"]
    )
    # Like `produce`: the good rows are used, the bad ones named, and the exit code says so.
    assert trained.exit_code == 1, trained.output
    assert (
        f"read {events} as jsonl: {expected.n_events} events, {len(expected.sequences)} users, "
        f"{expected.n_items} items; 1 bad rows skipped"
    ) in trained.stdout
    assert "published v" in trained.stdout
    assert f"line {bad_line}: missing_field" in trained.stderr
    assert "1 bad rows skipped" in trained.stderr


def test_train_strict_stops_at_the_first_bad_row_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = tmp_path / "events.jsonl"
    bad_line = _events_with_a_bad_row(events)
    (rejection,) = [row for line, row in read_events(events) if isinstance(row, Rejection)]
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    trained = CliRunner().invoke(app, ["train", "--data", str(events), "--strict", "--quiet"])
    assert trained.exit_code == 1
    assert trained.stderr == bad_row_message(events, bad_line, rejection) + "\n"
    assert trained.stdout == ""
    assert registry.current_version(tmp_path / "registry") is None


def test_train_rejects_a_csv_without_event_id_by_the_event_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,type,ts\nu,a,click,1000\nu,b,purchase,2000\n")
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--data", str(events), "--quiet"])
    assert trained.exit_code == 1
    assert f"read {events} as csv: 0 events, 0 users, 0 items; 2 bad rows skipped" in (
        trained.stdout
    )
    assert "line 2: missing_field: required field 'event_id' is missing" in trained.stderr
    assert "2 bad rows skipped" in trained.stderr
    strict = runner.invoke(app, ["train", "--data", str(events), "--strict", "--quiet"])
    assert strict.exit_code == 1
    assert strict.stderr == (f"{events}:2: missing_field: required field 'event_id' is missing\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    nothing = runner.invoke(app, ["train", "--data", str(empty), "--quiet"])
    assert nothing.exit_code == 1 and f"{empty}: no events to train on" in nothing.stderr


def test_train_starts_from_scratch_unless_asked_and_takes_a_catalogue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another model in the registry (another --dim) is neither continued nor in the
    way; --items gives the new model its categories and a content tower."""
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    events, items = tmp_path / "events.jsonl", tmp_path / "items.jsonl"
    sampled = runner.invoke(app, ["sample", "--out", str(events), "--items", str(items)])
    assert sampled.exit_code == 0, sampled.output
    first = runner.invoke(
        app, ["train", "--data", str(events), "--epochs", "1", "--dim", "16", "--quiet"]
    )
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        app,
        ["train", "--data", str(events), "--items", str(items), "--epochs", "1", "--dim", "24",
         "--quiet"],
    )  # fmt: skip
    assert second.exit_code == 0, second.output
    assert "warm start" not in second.output
    assert "catalogue: " in second.output and f"from {items}" in second.output
    version = runner.invoke(app, ["model", "current"]).output.strip()
    shown = json.loads(runner.invoke(app, ["model", "show", version]).output)
    assert shown["parent"] is None and shown["encoder"]["dim"] == 24
    assert shown["encoder"]["content_tower"]["buckets"] > 0
    assert shown["data_window"]["items_with_category"] > 0
    missing = runner.invoke(app, ["train", "--data", str(events), "--warm-start", "--dim", "16"])
    assert missing.exit_code == 1 and "has dim 24" in missing.stderr


def test_train_does_not_publish_a_model_nothing_could_measure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    events = tmp_path / "events.jsonl"
    rows = [
        {"event_id": f"e{n}", "user_id": f"u{n}", "item_id": f"i{n % 3}", "type": "click",
         "ts": 1_700_000_000_000 + n}
        for n in range(6)
    ]  # fmt: skip
    events.write_text("".join(json.dumps(row) + "\n" for row in rows))
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "--data", str(events), "--epochs", "1", "--quiet"])
    assert refused.exit_code == 1 and "0 validation cases" in refused.stderr
    assert registry.current_version(tmp_path / "registry") is None
    forced = runner.invoke(
        app, ["train", "--data", str(events), "--epochs", "1", "--quiet", "--force"]
    )
    assert forced.exit_code == 0, forced.output
    assert registry.current_version(tmp_path / "registry") is not None
