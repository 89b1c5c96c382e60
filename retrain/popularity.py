"""Per-item popularity by event type, decayed by event age, as the stream keeps
it in Redis; and a user's state rebuilt from a prefix of their events. Both
feed `streamrec.features.ranking_features` offline exactly as serving does."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

from retrain.data import UserSequence
from streamrec.events import EventType
from streamrec.features import RecentEvent, UserState


def decayed_popularity(
    sequences: Sequence[UserSequence], now_ms: int, half_life_s: float
) -> dict[str, dict[EventType, float]]:
    rate = math.log(2) / (half_life_s * 1000)
    popularity: dict[str, dict[EventType, float]] = defaultdict(lambda: defaultdict(float))
    for sequence in sequences:
        for item_id, event_type, ts_ms in zip(
            sequence.item_ids, sequence.types, sequence.ts_ms, strict=True
        ):
            popularity[item_id][event_type] += math.exp(-rate * max(now_ms - ts_ms, 0))
    return {item_id: dict(by_type) for item_id, by_type in popularity.items()}


def last_event_ms(sequences: Sequence[UserSequence]) -> int:
    return max((s.ts_ms[-1] for s in sequences if s.ts_ms), default=0)


def user_state(
    item_ids: Sequence[str], types: Sequence[EventType], ts_ms: Sequence[int], max_recent: int = 50
) -> UserState:
    """What the Redis state would hold after these events (oldest first)."""
    recent = [
        RecentEvent(item_id, event_type, ts)
        for item_id, event_type, ts in zip(
            item_ids[-max_recent:], types[-max_recent:], ts_ms[-max_recent:], strict=True
        )
    ]
    counts: dict[str, Counter[EventType]] = defaultdict(Counter)
    purchased = set()
    for item_id, event_type in zip(item_ids, types, strict=True):
        counts[item_id][event_type] += 1
        if event_type == EventType.PURCHASE:
            purchased.add(item_id)
    return UserState(recent_events=recent, purchased=frozenset(purchased), item_counts=counts)
