"""The training window: columns grouped as group_by_user groups event objects,
bounded by its setting, the replay sample stable."""

from __future__ import annotations

import random

from retrain.data import group_by_user
from retrain.window import TrainingWindow
from streamrec.archive import ArchivedEvent
from streamrec.events import Event, EventType


def archived(n: int, seed: int = 0, users: int = 40, prefix: str = "u") -> list[ArchivedEvent]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        event = Event(
            f"e{seed}-{k}",
            f"{prefix}{rng.randrange(users)}",
            f"i{rng.randrange(60)}",
            rng.choice(list(EventType)),
            rng.randrange(1000),  # ties on purpose: arrival order breaks them
        )
        out.append(ArchivedEvent(event, "clicks", k % 3, k, 10_000 + k))
    return out


def as_rows(events: list[ArchivedEvent]) -> list[tuple[str, str, EventType, int]]:
    return [(a.event.user_id, a.event.item_id, a.event.type, a.event.ts_ms) for a in events]


def test_sequences_are_what_group_by_user_gives() -> None:
    events = archived(2000)
    window = TrainingWindow(max_events=10_000)
    window.read_new(events)
    assert window.sequences() == group_by_user(as_rows(events))
    assert window.new_events == 2000 and window.dropped == 0
    assert window.offsets == {"clicks:0": [0, 1998], "clicks:1": [1, 1999], "clicks:2": [2, 1997]}


def test_beyond_max_events_the_oldest_go() -> None:
    events = archived(2500)
    window = TrainingWindow(max_events=1000)
    window.read_new(events)
    assert len(window) == 1000 and window.dropped == 1500 and window.new_events == 2500
    assert window.sequences() == group_by_user(as_rows(events[-1000:]))


def test_the_replay_sample_is_stable_older_first_and_takes_only_the_room_left() -> None:
    older, new = archived(3000, seed=1, users=400, prefix="old"), archived(500, seed=2)
    picks = []
    for _ in range(2):
        window = TrainingWindow(max_events=10_000)
        window.read_new(new)
        window.read_replay(older, 0.25)
        picks.append({s.user_id for s in window.sequences()} - {a.event.user_id for a in new})
    assert picks[0] == picks[1]
    assert 0.15 < len(picks[0]) / 400 < 0.35
    replayed = [a for a in older if a.event.user_id in picks[0]]
    assert window.replay_events == len(replayed)
    assert window.sequences() == group_by_user(as_rows(replayed + new))

    full = TrainingWindow(max_events=600)
    full.read_new(new)
    full.read_replay(older, 1.0)
    assert len(full) == 600 and full.replay_events == 100
    assert full.sequences() == group_by_user(as_rows(older[-100:] + new))
    # However many older events there are, the replay keeps to the room left.
    odd = TrainingWindow(max_events=600)
    odd.read_new(new)
    odd.read_replay(older[: 3050 - 1000], 1.0)
    assert len(odd) == 600 and odd.replay_events == 100
