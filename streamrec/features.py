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


def ranking_features(
    candidate_ids: Sequence[str],
    user_item_dots: np.ndarray,
    user: UserState,
    item_popularity: Mapping[str, Mapping[EventType, float]],
    now_ms: int,
    half_life_s: float = 6 * 3600,
) -> np.ndarray:
    """One row per candidate. `user_item_dots` is user vector · item vector, in
    candidate order; the retrieval columns are derived from it so that serving
    and training cannot disagree on them."""
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

    last_step: dict[str, int] = {}
    last_ts: dict[str, int] = {}
    recent = user.recent_events
    for step, event in enumerate(recent):
        last_step[event.item_id] = step
        last_ts[event.item_id] = event.ts_ms
    last_item = recent[-1].item_id if recent else None
    last_weight = TYPE_WEIGHTS[recent[-1].type] if recent else 0.0
    decay_per_ms = math.log(2) / (half_life_s * 1000)

    for row, item_id in enumerate(candidate_ids):
        popularity = item_popularity.get(item_id, {})
        counts = user.item_counts.get(item_id, {})
        out[row, 3] = math.log1p(sum(TYPE_WEIGHTS[t] * v for t, v in popularity.items()))
        out[row, 4] = math.log1p(popularity.get(EventType.CLICK, 0.0))
        out[row, 5] = math.log1p(popularity.get(EventType.PURCHASE, 0.0))
        out[row, 6] = math.log1p(sum(TYPE_WEIGHTS[t] * v for t, v in counts.items()))
        out[row, 7] = math.log1p(counts.get(EventType.CLICK, 0))
        out[row, 8] = float(item_id in user.purchased)
        seen_step = last_step.get(item_id)
        if seen_step is not None:
            out[row, 9] = 1.0
            out[row, 10] = 1.0 / (len(recent) - seen_step)
            age_ms = max(now_ms - last_ts[item_id], 0)
            out[row, 11] = math.exp(-decay_per_ms * age_ms)
        out[row, 12] = float(item_id == last_item)
    out[:, 13] = last_weight
    out[:, 14] = math.log1p(len(recent))
    return out
