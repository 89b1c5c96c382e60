"""Ranking features: the one function training and serving both call.

Inputs are plain values the Redis state holds (see `streamrec/state.py`): the
user's recent events, purchased items, per user-item counts by event type and
per-item decayed popularity by event type. Output is one float32 row per
candidate, in the column order of `FEATURE_NAMES`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, count, repeat

import numpy as np

from streamrec.covis import latest_distinct
from streamrec.events import EventType

# Bump when a column is added, removed, reordered or computed differently. A
# bundle trained on an older version whose columns are a prefix of these (schema 2:
# the first 22, schema 3: the first 24) still loads, its ranker fed those columns;
# any other is refused.
FEATURE_SCHEMA_VERSION = 4

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
    "in_model",
    "covis_total_log",
    "covis_latest_log",
    "covis_rank_inv",
    "distinct_recency_inv",
    "history_repeat_share",
    "last_was_repeat",
    # Schema 3: the catalogue's categories (0 where the catalogue has none).
    "category_share",
    "category_rank_inv",
    # Schema 4: the candidate's price against the user's usual price (the catalogue's
    # prices; 0 where either is unknown), and how new the item is (since its first
    # event; 0 where unknown).
    "price_vs_usual_log",
    "item_newness",
)

# The schemas a bundle may have been trained on: per schema, how many of the first
# FEATURE_NAMES its ranker reads.
READABLE_FEATURE_SCHEMAS: Mapping[int, int] = {
    2: 22,
    3: 24,
    FEATURE_SCHEMA_VERSION: len(FEATURE_NAMES),
}

# `price_vs_usual_log` is clipped to this many natural-log units either way.
PRICE_LOG_CLIP = 5.0
# `item_newness` is 1 / (1 + the item's age in these).
NEWNESS_UNIT_MS = 3600 * 1000


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
    # Co-visitation scores of neighbours of the user's latest items, decayed to the
    # request (`covis.covis_scores`): over those items, strongest first (ties by
    # id: the order the candidates and `covis_rank_inv` take), and from the latest
    # alone.
    covis_total: Mapping[str, float] = field(default_factory=dict)
    covis_latest: Mapping[str, float] = field(default_factory=dict)
    # The most popular items right now of the categories of the user's latest item
    # (`category_candidates`), and the categories of the user's recent items and
    # of whatever else is ranked for them (an item the catalogue lacks is absent).
    category_items: Sequence[str] = ()
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The catalogue's prices of the user's recent items and of what is ranked for
    # them (an item without one is absent).
    prices: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CandidateCatalogue:
    """The candidates' catalogue attributes, resolved in bulk by a caller that keeps
    them by item row (the model server: model_server/catalogue_rows.py), in place of
    `UserState.categories` and `UserState.prices` looked up per candidate (those two
    lookups were a third of `ranking_features` per request). `prices`: each
    candidate's price, 0 where none. `category_codes`: each candidate's categories as
    a code, 0 for none; `coded[category]` lists the codes whose categories hold that
    category, of `codes` in all. The columns come out as from the lookups."""

    prices: np.ndarray
    category_codes: np.ndarray
    coded: Mapping[str, Sequence[int]]
    codes: int


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


def category_read(max_category: int) -> int:
    """How many of a category's most popular items are read for `max_category` of
    them to join a user's candidates: twice as many, as the user's own items and
    the other extras may be among them."""
    return 2 * max_category


def category_candidates(per_category: Sequence[Sequence[str]], n: int) -> list[str]:
    """Up to `n` distinct items from the most-popular lists of the latest item's
    categories, taken in turn (the first of each, then the second of each...)."""
    out: list[str] = []
    seen: set[str] = set()
    for place in range(max((len(items) for items in per_category), default=0)):
        for items in per_category:
            if len(out) == n:
                return out
            if place < len(items) and items[place] not in seen:
                seen.add(items[place])
                out.append(items[place])
    return out


def extra_candidates(
    retrieved: Collection[str],
    user: UserState,
    max_recent: int,
    max_covis: int,
    trending: Sequence[str] = (),
    max_category: int = 0,
) -> list[str]:
    """What joins retrieval's candidates: up to `max_recent` of the user's own distinct
    recent items, latest first, then up to `max_covis` of the strongest co-visitation
    neighbours of the user's latest items, then the `trending` items (the top few,
    every event type alike), then up to `max_category` of the most popular items of
    the latest item's categories (`user.category_items`), each unless already there.
    People go back to what they just looked at, to what others looked at next to it,
    to what everyone is looking at now and to what is popular among things like
    it; none needs the model to know the item (a new one is recommended the moment
    events link it). The ranker's columns decide how far each one rises."""
    have = set(retrieved)
    added: list[str] = []

    def add(item_id: str) -> bool:
        if item_id in have:
            return False
        have.add(item_id)
        added.append(item_id)
        return True

    for item_id in latest_distinct([e.item_id for e in user.recent_events], max_recent):
        add(item_id)
    if max_covis > 0 and user.covis_total:
        taken = 0
        for item_id in user.covis_total:  # strongest first
            if taken == max_covis:
                break
            taken += add(item_id)
    for item_id in trending:
        add(item_id)
    taken = 0
    for item_id in user.category_items:
        if taken == max_category:
            break
        taken += add(item_id)
    return added


def ranking_features(
    candidate_ids: Sequence[str],
    user_item_dots: np.ndarray,
    user: UserState,
    candidate_popularity: np.ndarray,
    now_ms: int,
    half_life_s: float = 6 * 3600,
    candidate_first_seen_ms: np.ndarray | None = None,
    candidate_catalogue: CandidateCatalogue | None = None,
) -> np.ndarray:
    """One row per candidate. `user_item_dots` is user vector · item vector, in
    candidate order, NaN where the model has no vector for the item (it entered
    through the user's history or co-visitation); the retrieval columns are
    derived from it so that serving and training cannot disagree on them, with the
    lowest known dot standing in for a missing one. `candidate_popularity` is
    `popularity_rows` of the candidates (or the same table read from Redis);
    `candidate_first_seen_ms` the time of each candidate's first event (0: none
    known), as the stream keeps it (`state.first_seen`); `candidate_catalogue` the
    candidates' prices and categories when the caller resolved them in bulk.

    Vectorised: the only Python loops run over the user's own items (a few
    dozen) and co-visitation neighbours (a few hundred), never over the candidates."""
    n = len(candidate_ids)
    dots = np.asarray(user_item_dots, dtype=np.float64).reshape(n)
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    # Every column that depends only on which item a candidate is (the user's own
    # items, co-visitation neighbours, the latest item's category list) is computed
    # once per such item (slot 1..) and gathered in one pass; slot 0 is every other
    # item. The candidates are a few hundred, these items a few dozen to a few
    # hundred: one dict lookup per candidate instead of one per column.
    recent = user.recent_events
    covis_total, covis_latest = user.covis_total, user.covis_latest
    # Numbered from 1 in order of first appearance (no Python loop over them).
    slots: dict[str, int] = dict(
        zip(
            dict.fromkeys(
                chain(
                    user.item_counts,
                    (e.item_id for e in recent),
                    user.purchased,
                    covis_total,
                    covis_latest,
                    user.category_items,
                )
            ),
            count(1),
        )
    )
    # As wide as a feature row: a candidate's row starts as its item's row (one
    # gather), the other columns zero until set below.
    per_item = np.zeros((len(slots) + 1, len(FEATURE_NAMES)), dtype=np.float32)
    # Filled a column at a time (an element assignment into numpy costs as much as
    # a dozen dict lookups), each column's items distinct.
    if user.item_counts:
        counted = [slots[i] for i in user.item_counts]
        per_item[counted, 6] = np.log1p(
            [sum(TYPE_WEIGHTS[t] * v for t, v in c.items()) for c in user.item_counts.values()]
        )
        per_item[counted, 7] = np.log1p(
            [c.get(EventType.CLICK, 0) for c in user.item_counts.values()]
        )
    if user.purchased:
        per_item[[slots[i] for i in user.purchased], 8] = 1.0
    # Recency on the user's own clock (from their latest event), not the request's:
    # training knows when each case's user last acted, not when they will ask, and
    # a replay or a clock running ahead must not age every item alike.
    latest_ms = recent[-1].ts_ms if recent else now_ms
    if recent:
        # Each item's last step in the history (a later one overwrites).
        last_step = {event.item_id: step for step, event in enumerate(recent)}
        seen = [slots[i] for i in last_step]
        steps = np.fromiter(last_step.values(), dtype=np.int64, count=len(last_step))
        seen_ms = np.array([recent[step].ts_ms for step in last_step.values()], dtype=np.float64)
        decay_per_ms = math.log(2) / (half_life_s * 1000)
        per_item[seen, 9] = 1.0
        per_item[seen, 10] = 1.0 / (len(recent) - steps)
        per_item[seen, 11] = np.exp(-decay_per_ms * np.maximum(latest_ms - seen_ms, 0))
        per_item[slots[recent[-1].item_id], 12] = 1.0
    if covis_total:
        # Index arrays from fromiter, not lists: numpy converts a list index anew
        # at each use (~15 us for a few hundred ids).
        linked = np.fromiter(map(slots.__getitem__, covis_total), np.intp, len(covis_total))
        per_item[linked, 16] = np.log1p(np.fromiter(covis_total.values(), np.float64))
        per_item[linked, 18] = 1.0 / np.arange(1, len(linked) + 1)
        if covis_latest:
            per_item[[slots[i] for i in covis_latest], 17] = np.log1p(list(covis_latest.values()))
    distinct = latest_distinct([e.item_id for e in recent], len(recent))
    if distinct:
        per_item[[slots[i] for i in distinct], 19] = 1.0 / np.arange(1, len(distinct) + 1)
    if user.category_items:
        # An item listed twice keeps its later place, as it always has.
        place = {item_id: p for p, item_id in enumerate(user.category_items, start=1)}
        per_item[[slots[i] for i in place], 23] = 1.0 / np.fromiter(place.values(), np.float64)
    out = per_item[np.fromiter(map(slots.get, candidate_ids, repeat(0)), np.intp, n)]
    known = ~np.isnan(dots)
    dots = np.where(known, dots, dots[known].min() if known.any() else 0.0)
    out[:, 0] = dots
    shifted = dots - dots.max()
    out[:, 1] = shifted - math.log(float(np.exp(shifted).sum()))
    order = np.argsort(-dots, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n)
    out[:, 2] = np.log1p(ranks)
    out[:, 15] = known

    popularity = np.asarray(candidate_popularity, dtype=np.float64).reshape(n, len(EVENT_TYPES))
    out[:, 3] = np.log1p(popularity @ POPULARITY_WEIGHTS)
    out[:, 4] = np.log1p(popularity[:, _CLICK])
    out[:, 5] = np.log1p(popularity[:, _PURCHASE])

    out[:, 13] = TYPE_WEIGHTS[recent[-1].type] if recent else 0.0
    out[:, 14] = math.log1p(len(recent))
    if distinct:
        # Is this user going back and forth between items, or moving on? The same
        # for every candidate: it tells the ranker how far to trust the user columns.
        out[:, 20] = 1.0 - len(distinct) / len(recent)
        out[:, 21] = float(any(e.item_id == recent[-1].item_id for e in recent[:-1]))
    if user.categories and recent:
        # Per category, the share of the user's recent events on items in it; a
        # candidate takes the largest over its own categories.
        share: dict[str, float] = {}
        categories_of = user.categories
        for event in recent:
            for category in categories_of.get(event.item_id, ()):
                share[category] = share.get(category, 0.0) + 1.0 / len(recent)
        if candidate_catalogue is not None:
            # The largest share per code, then each candidate its code's.
            best = np.zeros(candidate_catalogue.codes, dtype=np.float64)
            coded_of = candidate_catalogue.coded
            at: list[int] = []
            values: list[float] = []
            for category, value in share.items():
                coded = coded_of.get(category)
                if coded:
                    at.extend(coded)
                    values.extend([value] * len(coded))
            if at:
                np.maximum.at(best, at, values)  # one call, not one per category
            out[:, 22] = best[candidate_catalogue.category_codes]
        else:
            column = [0.0] * n
            for row, item_id in enumerate(candidate_ids):
                # A plain loop: a generator and max() per candidate cost ~3x as much.
                best_share = 0.0
                for category in categories_of.get(item_id, ()):
                    value = share.get(category, 0.0)
                    if value > best_share:
                        best_share = value
                column[row] = best_share
            out[:, 22] = column
    if user.prices and recent:
        usual = usual_price(recent, user.prices)
        if usual is not None:
            if candidate_catalogue is not None:
                prices = candidate_catalogue.prices
            else:
                prices = np.fromiter(
                    map(user.prices.get, candidate_ids, repeat(0.0)), np.float64, n
                )
            priced = prices > 0
            ratio = np.log(np.where(priced, prices, usual) / usual)
            # np.clip's own overhead is ~10 us at a few hundred rows; the same values.
            out[:, 24] = np.minimum(np.maximum(ratio, -PRICE_LOG_CLIP), PRICE_LOG_CLIP)
    if candidate_first_seen_ms is not None:
        first = np.asarray(candidate_first_seen_ms, dtype=np.float64).reshape(n)
        age = np.maximum(latest_ms - first, 0.0) / NEWNESS_UNIT_MS
        out[:, 25] = np.where(first > 0, 1.0 / (1.0 + age), 0.0)
    return out


def usual_price(recent: Sequence[RecentEvent], prices: Mapping[str, float]) -> float | None:
    """The median price of the user's recent events' items that have one (each event
    counts); None when none has."""
    seen = [price for event in recent if (price := prices.get(event.item_id, 0.0)) > 0]
    if not seen:
        return None
    return float(statistics.median(seen))
