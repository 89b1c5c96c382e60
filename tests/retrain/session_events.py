"""An event file of real yoochoose sessions, as the training tests read it."""

import json
from pathlib import Path

from bench.scenarios.data import yoochoose_sessions


def write_session_events(path: Path, sessions: int) -> Path:
    """The first `sessions` yoochoose sessions as JSONL events (our schema), one
    second apart, each session's fourth event a purchase."""
    with path.open("w") as handle:
        for sequence in yoochoose_sessions(sessions):
            for step, item_id in enumerate(sequence.item_ids):
                body = {
                    "event_id": f"{sequence.user_id}-{step}",
                    "user_id": sequence.user_id,
                    "item_id": item_id,
                    "type": "purchase" if step == 3 else "click",
                    "ts": 1_700_000_000_000 + step * 1000,
                }
                handle.write(json.dumps(body) + "\n")
    return path
