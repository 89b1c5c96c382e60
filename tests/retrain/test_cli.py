"""`streamrec train` and `streamrec model ...` end to end on a small real slice."""

import json

from typer.testing import CliRunner

from cli import app
from tests.retrain.fixtures import yoochoose_sessions


def test_train_publishes_and_model_commands_read_the_registry(tmp_path, monkeypatch) -> None:
    events = tmp_path / "events.jsonl"
    with events.open("w") as handle:
        for sequence in yoochoose_sessions(300):
            for step, item_id in enumerate(sequence.item_ids):
                body = {
                    "event_id": f"{sequence.user_id}-{step}",
                    "user_id": sequence.user_id,
                    "item_id": item_id,
                    "type": "purchase" if step == 3 else "click",
                    "ts": 1_700_000_000_000 + step * 1000,
                }
                handle.write(json.dumps(body) + "\n")
    monkeypatch.setenv("STREAMREC_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    runner = CliRunner()

    trained = runner.invoke(
        app, ["train", "--data", str(events), "--epochs", "1", "--dim", "16", "--quiet"]
    )
    assert trained.exit_code == 0, trained.output
    first = runner.invoke(app, ["model", "current"]).output.strip()
    assert "published " + first in trained.output

    # A second run warm-starts from the first and names it as parent.
    again = runner.invoke(
        app, ["train", "--data", str(events), "--epochs", "1", "--dim", "16", "--quiet"]
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
