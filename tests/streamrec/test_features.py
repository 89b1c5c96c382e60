import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamrec.events import EventType
from streamrec.features import (
    EVENT_TYPES,
    FEATURE_NAMES,
    TYPE_WEIGHTS,
    RecentEvent,
    UserState,
    extra_candidates,
    popularity_rows,
    ranking_features,
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
    # On the user's own clock: asking later (or from a replay's clock) ages nothing.
    later = ranking_features(
        ["a", "b", "c"], np.zeros(3), _user(), _none(3), 30 * HOUR_MS, half_life_s=3600
    )
    assert (
        later[:, COLUMN["time_since_seen_decay"]].tolist()
        == rows[:, COLUMN["time_since_seen_decay"]].tolist()
    )
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
def test_features_are_always_finite(
    dots: list[float], history: list[tuple[int, EventType, int]], now_ms: int
) -> None:
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


def _history(*items: str) -> UserState:
    return UserState(
        recent_events=tuple(RecentEvent(i, EventType.CLICK, n) for n, i in enumerate(items))
    )


def test_extras_are_the_users_distinct_recent_items_latest_first_then_covisitation() -> None:
    user = replace(
        _history("a", "b", "a", "c"),
        covis_total={"x": 3.0, "b": 2.5, "y": 2.0, "z": 1.0},
        covis_latest={"x": 1.0},
    )
    # Retrieval found c and y already; caps of 2 recent and 2 neighbours.
    # The latest two distinct are c (retrieved) and a; then x and b.
    assert extra_candidates(["c", "y"], user, 2, 2) == ["a", "x", "b"]
    assert extra_candidates([], user, 9, 0) == ["c", "a", "b"]
    assert extra_candidates([], user, 0, 9) == ["x", "b", "y", "z"]
    # Then the trending items, each unless already there.
    assert extra_candidates(["c", "y"], user, 2, 2, ["t", "a", "c", "u"]) == [
        "a",
        "x",
        "b",
        "t",
        "u",
    ]


def test_an_item_without_a_vector_gets_the_lowest_dot_and_is_marked() -> None:
    user = replace(_history("a", "n"), covis_total={"n2": 4.0, "b": 1.0}, covis_latest={"n2": 4.0})
    dots = np.array([0.9, 0.2, np.nan, np.nan])
    rows = ranking_features(["b", "a", "n", "n2"], dots, user, _none(4), 2 * HOUR_MS)
    assert rows[:, COLUMN["in_model"]].tolist() == [1, 1, 0, 0]
    assert rows[2:, COLUMN["user_item_dot"]].tolist() == pytest.approx([0.2, 0.2])
    assert np.isfinite(rows).all()
    # The co-visitation columns: total, from the latest item, rank among neighbours.
    assert rows[3, COLUMN["covis_total_log"]] == pytest.approx(math.log1p(4.0))
    assert rows[3, COLUMN["covis_latest_log"]] == pytest.approx(math.log1p(4.0))
    assert rows[:, COLUMN["covis_rank_inv"]].tolist() == [0.5, 0.0, 0.0, 1.0]
    # The user's distinct items latest first: n is 1st, a 2nd.
    assert rows[:, COLUMN["distinct_recency_inv"]].tolist() == [0.0, 0.5, 1.0, 0.0]


def test_category_columns_from_the_catalogue() -> None:
    # The user's events: a (shoes), b (hats), a (shoes): shoes is 2/3 of them.
    user = replace(
        _user(),
        category_items=("s1", "a", "s2"),
        categories={"a": ("shoes",), "b": ("hats",), "s1": ("shoes",), "s2": ("shoes", "hats")},
    )
    rows = ranking_features(["s2", "s1", "b", "x"], np.zeros(4), user, _none(4), 2 * HOUR_MS)
    share = rows[:, COLUMN["category_share"]].tolist()
    assert share == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0])
    assert rows[:, COLUMN["category_rank_inv"]].tolist() == pytest.approx([1 / 3, 1.0, 0, 0])
    # No catalogue: both 0, as for every bundle trained without one.
    bare = ranking_features(["s2", "a"], np.zeros(2), _user(), _none(2), 2 * HOUR_MS)
    assert not bare[:, COLUMN["category_share"] :].any()


def test_category_candidates_come_last_and_count_only_new_items() -> None:
    user = replace(_user(), category_items=("a", "s1", "t", "s2", "s3"))
    # "a" is the user's own, "t" trending: neither counts against the two taken.
    extra = extra_candidates(["r"], user, 5, 0, ["t"], max_category=2)
    assert extra == ["a", "b", "t", "s1", "s2"]
    assert extra_candidates(["r"], user, 5, 0, ["t"]) == ["a", "b", "t"]


def test_price_against_the_users_usual_price() -> None:
    recent = [RecentEvent(i, EventType.CLICK, n) for n, i in enumerate(["a", "b", "c", "free"])]
    prices = {"a": 10.0, "b": 10.0, "c": 40.0, "dear": 20.0, "cheap": 5.0, "huge": 1e9}
    user = UserState(recent, prices=prices)
    rows = ranking_features(["dear", "cheap", "unpriced", "huge"], np.zeros(4), user, _none(4), 9)
    column = rows[:, COLUMN["price_vs_usual_log"]]
    # The usual price is the median of the priced events' items: 10.
    assert column[:3] == pytest.approx([math.log(2), math.log(0.5), 0.0])
    assert column[3] == 5.0  # clipped
    unpriced_history = UserState(recent[3:], prices=prices)
    assert not ranking_features(["dear"], np.zeros(1), unpriced_history, _none(1), 9)[0, 24]


def test_item_newness_on_the_users_clock() -> None:
    user = UserState([RecentEvent("a", EventType.CLICK, 10 * HOUR_MS)])
    first = np.array([10 * HOUR_MS, 9 * HOUR_MS, 0.0, 12 * HOUR_MS])
    rows = ranking_features(["new", "hour", "unknown", "later"], np.zeros(4), user, _none(4),
                            99 * HOUR_MS, candidate_first_seen_ms=first)  # fmt: skip
    # 1 / (1 + hours since the first event), at the user's latest event; 0: unknown.
    assert rows[:, COLUMN["item_newness"]].tolist() == [1.0, 0.5, 0.0, 1.0]
    assert not ranking_features(["x"], np.zeros(1), user, _none(1), 0)[0, COLUMN["item_newness"]]
