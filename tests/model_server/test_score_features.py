"""/score's shortcut for the list features of an item outside the user's candidates
gives the numbers `features.ranking_features` gives for that item appended to them."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from model_server.recommender import LOG_SOFTMAX_COLUMN, RANK_LOG_COLUMN, against_candidates
from streamrec import features

USER = features.UserState(recent_events=())
# Few distinct values, so that ties (and NaN) come up often.
dot = st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0, float("nan")])


@given(
    candidate_dots=st.lists(dot, max_size=12),
    item_dots=st.lists(dot.filter(lambda d: not np.isnan(d)), min_size=1, max_size=5),
)
def test_list_features_match_ranking_features_with_the_item_appended(
    candidate_dots: list[float], item_dots: list[float]
) -> None:
    log_softmax, rank_log = against_candidates(np.array(candidate_dots), np.array(item_dots))
    for n, item_dot in enumerate(item_dots):
        ids = [f"c{i}" for i in range(len(candidate_dots))] + ["item"]
        dots = np.array([*candidate_dots, item_dot])
        popularity = np.zeros((len(ids), len(features.EVENT_TYPES)))
        row = features.ranking_features(ids, dots, USER, popularity, now_ms=0)[-1]
        assert np.isclose(log_softmax[n], row[LOG_SOFTMAX_COLUMN], atol=1e-6)
        assert np.isclose(rank_log[n], row[RANK_LOG_COLUMN], atol=1e-6)
