import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamrec.events import EventType
from streamrec.features import (
    EVENT_TYPES,
    FEATURE_NAMES,
    TYPE_WEIGHTS,
    RecentEvent,
    UserState,
    popularity_rows,
    ranking_features,
    with_recent_items,
)

COLUMN = {name: index for index, name in enumerate(FEATURE_NAMES)}
HOUR_MS = 3600 * 1000


def _none(n: int) -> np.ndarray:
    return popularity_rows([""] * n, {})


def _user() -> UserState:
    return UserState(
        recent_events=[
            RecentEvent("a", EventType.CLICK, 0),
            RecentEvent("b", EventType.PURCHASE, HOUR_MS),
            RecentEvent("a", EventType.CLICK, 2 * HOUR_MS),
        ],
        purchased=frozenset({"b"}),
        item_counts={"a": {EventType.CLICK: 2}, "b": {EventType.PURCHASE: 1}},
    )


def test_one_row_per_candidate_in_schema_order() -> None:
    rows = ranking_features(
        ["a", "b", "c"], np.array([0.5, 2.0, 1.0]), _user(), _none(3), 2 * HOUR_MS
    )
    assert rows.shape == (3, len(FEATURE_NAMES)) and rows.dtype == np.float32
    assert rows[:, COLUMN["user_item_dot"]].tolist() == [0.5, 2.0, 1.0]
    assert math.isclose(
        float(np.exp(rows[:, COLUMN["retrieval_log_softmax"]]).sum()), 1.0, rel_tol=1e-5
    )
    assert rows[:, COLUMN["retrieval_rank_log"]].tolist() == [
        np.float32(math.log1p(2)),
        0.0,
        np.float32(math.log1p(1)),
    ]


def test_history_columns() -> None:
    rows = ranking_features(
        ["a", "b", "c"], np.zeros(3), _user(), _none(3), 2 * HOUR_MS, half_life_s=3600
    )
    a, b, c = rows
    assert a[COLUMN["is_last_item"]] == 1 and b[COLUMN["is_last_item"]] == 0
    assert a[COLUMN["steps_since_seen_inv"]] == 1.0 and b[COLUMN["steps_since_seen_inv"]] == 0.5
    assert a[COLUMN["time_since_seen_decay"]] == 1.0
    assert math.isclose(b[COLUMN["time_since_seen_decay"]], 0.5, rel_tol=1e-6)  # one half-life ago
    assert b[COLUMN["user_item_purchased"]] == 1 and a[COLUMN["user_item_purchased"]] == 0
    assert c[COLUMN["user_item_seen"]] == 0 and c[COLUMN["user_item_weighted_log"]] == 0
    assert a[COLUMN["history_length_log"]] == np.float32(math.log1p(3))


def test_purchases_weigh_more_than_clicks() -> None:
    assert (
        TYPE_WEIGHTS[EventType.PURCHASE]
        > TYPE_WEIGHTS[EventType.ADD_TO_CART]
        > TYPE_WEIGHTS[EventType.CLICK]
    )
    bought = UserState([], item_counts={"x": {EventType.PURCHASE: 1}})
    clicked = UserState([], item_counts={"x": {EventType.CLICK: 1}})
    column = COLUMN["user_item_weighted_log"]
    assert (
        ranking_features(["x"], np.zeros(1), bought, _none(1), 0)[0, column]
        > (ranking_features(["x"], np.zeros(1), clicked, _none(1), 0)[0, column])
    )
    popularity = {"p": {EventType.PURCHASE: 1.0}, "c": {EventType.CLICK: 1.0}}
    rows = ranking_features(
        ["p", "c"], np.zeros(2), UserState([]), popularity_rows(["p", "c"], popularity), 0
    )
    assert rows[0, COLUMN["popularity_weighted_log"]] > rows[1, COLUMN["popularity_weighted_log"]]


def test_no_candidates_and_no_history() -> None:
    assert ranking_features([], np.zeros(0), UserState([]), _none(0), 0).shape == (
        0,
        len(FEATURE_NAMES),
    )
    row = ranking_features(["a"], np.ones(1), UserState([]), _none(1), 0)[0]
    assert row[COLUMN["history_length_log"]] == 0 and row[COLUMN["last_type_weight"]] == 0


@given(
    dots=st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=30),
    history=st.lists(
        st.tuples(st.integers(0, 40), st.sampled_from(list(EventType)), st.integers(0, 10**12))
    ),
    now_ms=st.integers(0, 10**12),
)
def test_features_are_always_finite(dots, history, now_ms) -> None:
    events = [RecentEvent(str(item), kind, ts) for item, kind, ts in history]
    candidates = [str(i) for i in range(len(dots))]
    popularity = {str(i): {EventType.CLICK: float(i)} for i in range(10)}
    rows = ranking_features(
        candidates,
        np.array(dots),
        UserState(events),
        popularity_rows(candidates, popularity),
        now_ms,
    )
    assert np.isfinite(rows).all()


def test_popularity_rows_follow_event_types_and_default_to_zero() -> None:
    table = popularity_rows(["p", "nobody"], {"p": {EventType.PURCHASE: 2.0}})
    assert table.shape == (2, len(EVENT_TYPES))
    assert table[0].tolist() == [2.0 if t == EventType.PURCHASE else 0.0 for t in EVENT_TYPES]
    assert not table[1].any()


def test_a_repeated_candidate_gets_the_same_user_columns_each_time() -> None:
    rows = ranking_features(["a", "c", "a"], np.zeros(3), _user(), _none(3), 2 * HOUR_MS)
    user_columns = slice(COLUMN["user_item_weighted_log"], COLUMN["is_last_item"] + 1)
    assert rows[0, user_columns].tolist() == rows[2, user_columns].tolist()
    assert rows[0, COLUMN["user_item_clicks_log"]] == np.float32(math.log1p(2))


def test_recent_items_retrieval_missed_take_the_last_places_latest_first() -> None:
    rows, dots = np.array([7, 3, 9, 4, 5]), np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # oldest first, with a repeat (2), one retrieval found (3) and an unknown item (0)
    recent = [2, 3, 0, 8, 2]
    recent_dots = np.array([0.1, 0.8, 0.0, 0.2, 0.1])

    merged, merged_dots = with_recent_items(rows, dots, recent, recent_dots, max_recent=20)

    assert merged.tolist() == [7, 3, 9, 2, 8]
    assert merged_dots.tolist() == [0.9, 0.8, 0.7, 0.1, 0.2]


def test_a_recent_item_retrieval_ranked_low_keeps_its_place() -> None:
    rows, dots = np.array([7, 3, 9, 4, 5]), np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    recent = [4, 8, 6]  # 4: retrieval found it, in the places the others take
    recent_dots = np.array([0.6, 0.2, 0.3])

    merged, merged_dots = with_recent_items(rows, dots, recent, recent_dots, max_recent=20)

    assert merged.tolist() == [7, 3, 4, 6, 8]
    assert merged_dots.tolist() == [0.9, 0.8, 0.6, 0.3, 0.2]
    # Only recent items left: nothing more can be displaced.
    assert with_recent_items(np.array([4]), np.array([0.6]), recent, recent_dots, 20)[
        0
    ].tolist() == [4]


def test_recent_items_are_capped_and_never_grow_the_candidates() -> None:
    rows, dots = np.array([1, 2, 3]), np.array([0.3, 0.2, 0.1])
    recent = [10, 11, 12, 13, 14]
    recent_dots = np.arange(5, dtype=np.float64)

    assert with_recent_items(rows, dots, recent, recent_dots, 2)[0].tolist() == [1, 14, 13]
    assert with_recent_items(rows, dots, recent, recent_dots, 9)[0].tolist() == [14, 13, 12]
    assert with_recent_items(rows, dots, recent, recent_dots, 0)[0].tolist() == [1, 2, 3]
