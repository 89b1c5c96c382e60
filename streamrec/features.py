"""Ranking features: the one function training and serving both call.

Inputs are plain values the Redis state holds (see `streamrec/state.py`): the
user's recent events, purchased items, per user-item counts by event type and
per-item decayed popularity by event type. Output is one float32 row per
candidate, in the column order of `FEATURE_NAMES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamrec.events import EventType

# Bump when a column is added, removed, reordered or computed differently: a
# bundle trained on another version is refused at load time.
FEATURE_SCHEMA_VERSION = 1

# Fixed order: the encoder's type ids are 1 + the index here (0 is padding).
EVENT_TYPES: tuple[EventType, ...] = (
    EventType.CLICK,
    EventType.PURCHASE,
    EventType.VIEW,
    EventType.ADD_TO_CART,
    EventType.FAVORITE,
)

# The encoder's event-type input: 0 is padding. Serving and training both use this.
ENCODER_TYPE_IDS: Mapping[EventType, int] = {t: index + 1 for index, t in enumerate(EVENT_TYPES)}

# How much one event says about intent. Purchases weigh most.
TYPE_WEIGHTS: Mapping[EventType, float] = {
    EventType.VIEW: 0.5,
    EventType.CLICK: 1.0,
    EventType.FAVORITE: 2.0,
    EventType.ADD_TO_CART: 3.0,
    EventType.PURCHASE: 5.0,
}

FEATURE_NAMES: tuple[str, ...] = (
    "user_item_dot",
    "retrieval_log_softmax",
    "retrieval_rank_log",
    "popularity_weighted_log",
    "popularity_click_log",
    "popularity_purchase_log",
    "user_item_weighted_log",
    "user_item_clicks_log",
    "user_item_purchased",
    "user_item_seen",
    "steps_since_seen_inv",
    "time_since_seen_decay",
    "is_last_item",
    "last_type_weight",
    "history_length_log",
)


@dataclass(frozen=True, slots=True)
class RecentEvent:
    item_id: str
    type: EventType
    ts_ms: int


@dataclass(frozen=True, slots=True)
class UserState:
    """What the state store knows about one user; `recent_events` oldest first."""

    recent_events: Sequence[RecentEvent]
    purchased: frozenset[str] = frozenset()
    item_counts: Mapping[str, Mapping[EventType, int]] = field(default_factory=dict)


# Popularity reaches `ranking_features` as one row per candidate, one column per
# event type in EVENT_TYPES order, already decayed to the request time.
POPULARITY_WEIGHTS = np.array([TYPE_WEIGHTS[t] for t in EVENT_TYPES], dtype=np.float64)
_CLICK = EVENT_TYPES.index(EventType.CLICK)
_PURCHASE = EVENT_TYPES.index(EventType.PURCHASE)
_NO_POPULARITY: Mapping[EventType, float] = {}


def popularity_rows(
    item_ids: Sequence[str], item_popularity: Mapping[str, Mapping[EventType, float]]
) -> np.ndarray:
    """(len(item_ids), len(EVENT_TYPES)) float64 from a per-item mapping; 0 where absent."""
    rows = [
        [by_type.get(t, 0.0) for t in EVENT_TYPES]
        for by_type in (item_popularity.get(i, _NO_POPULARITY) for i in item_ids)
    ]
    return np.array(rows, dtype=np.float64).reshape(len(item_ids), len(EVENT_TYPES))


def with_recent_items(
    rows: np.ndarray,
    dots: np.ndarray,
    recent_rows: Sequence[int],
    recent_dots: np.ndarray,
    max_recent: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Retrieval's candidates (`rows`, best first, with their `dots`) with the user's
    own recent items added: up to `max_recent` distinct ones retrieval missed, latest
    first, take the last places, so the count stays `len(rows)`. People go back to
    what they just looked at; the ranker's user-item columns decide if they do here.
    They displace retrieval's lowest-ranked candidates that are not recent items
    themselves (a recent item retrieval found keeps its place). `recent_rows` are
    oldest first, as the recent-events list keeps them; row 0 (an item the model
    does not know) is skipped."""
    if max_recent <= 0 or not len(recent_rows):
        return rows, dots
    have = set(rows.tolist())
    added: list[int] = []
    for position in range(len(recent_rows) - 1, -1, -1):
        row = int(recent_rows[position])
        if row > 0 and row not in have:
            have.add(row)
            added.append(position)
            if len(added) == max_recent:
                break
    if not added:
        return rows, dots
    recent = {int(row) for row in recent_rows}
    displaced: list[int] = []  # from the last place up, as many as are added
    for position in range(len(rows) - 1, -1, -1):
        if len(displaced) == len(added):
            break
        if int(rows[position]) not in recent:
            displaced.append(position)
    added = added[: len(displaced)]
    kept = np.ones(len(rows), dtype=bool)
    kept[displaced[: len(added)]] = False
    extra_rows = np.asarray([recent_rows[p] for p in added], dtype=rows.dtype)
    extra_dots = np.asarray(recent_dots, dtype=dots.dtype)[added]
    return np.concatenate([rows[kept], extra_rows]), np.concatenate([dots[kept], extra_dots])


def ranking_features(
    candidate_ids: Sequence[str],
    user_item_dots: np.ndarray,
    user: UserState,
    candidate_popularity: np.ndarray,
    now_ms: int,
    half_life_s: float = 6 * 3600,
) -> np.ndarray:
    """One row per candidate. `user_item_dots` is user vector · item vector, in
    candidate order; the retrieval columns are derived from it so that serving
    and training cannot disagree on them. `candidate_popularity` is
    `popularity_rows` of the candidates (or the same table read from Redis).

    Vectorised: the only Python loops run over the user's own items (a few
    dozen), never over the candidates."""
    n = len(candidate_ids)
    dots = np.asarray(user_item_dots, dtype=np.float64).reshape(n)
    out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    if n == 0:
        return out
    out[:, 0] = dots
    shifted = dots - dots.max()
    out[:, 1] = shifted - math.log(float(np.exp(shifted).sum()))
    order = np.argsort(-dots, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n)
    out[:, 2] = np.log1p(ranks)

    popularity = np.asarray(candidate_popularity, dtype=np.float64).reshape(n, len(EVENT_TYPES))
    out[:, 3] = np.log1p(popularity @ POPULARITY_WEIGHTS)
    out[:, 4] = np.log1p(popularity[:, _CLICK])
    out[:, 5] = np.log1p(popularity[:, _PURCHASE])

    # Columns 6..12 depend only on the user's own items: compute them once per
    # item the user touched (slot 1..), then gather; slot 0 is every other item.
    recent = user.recent_events
    slots: dict[str, int] = {}
    for item_id in (*user.item_counts, *(e.item_id for e in recent), *user.purchased):
        slots.setdefault(item_id, len(slots) + 1)
    per_item = np.zeros((len(slots) + 1, 7), dtype=np.float64)
    for item_id, counts in user.item_counts.items():
        slot = slots[item_id]
        per_item[slot, 0] = math.log1p(sum(TYPE_WEIGHTS[t] * v for t, v in counts.items()))
        per_item[slot, 1] = math.log1p(counts.get(EventType.CLICK, 0))
    for item_id in user.purchased:
        per_item[slots[item_id], 2] = 1.0
    decay_per_ms = math.log(2) / (half_life_s * 1000)
    for step, event in enumerate(recent):  # a later step overwrites: the last time seen
        slot = slots[event.item_id]
        per_item[slot, 3] = 1.0
        per_item[slot, 4] = 1.0 / (len(recent) - step)
        per_item[slot, 5] = math.exp(-decay_per_ms * max(now_ms - event.ts_ms, 0))
    if recent:
        per_item[slots[recent[-1].item_id], 6] = 1.0
    if slots:
        out[:, 6:13] = per_item[[slots.get(i, 0) for i in candidate_ids]]
    out[:, 13] = TYPE_WEIGHTS[recent[-1].type] if recent else 0.0
    out[:, 14] = math.log1p(len(recent))
    return out
