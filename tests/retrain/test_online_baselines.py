"""The online baselines on hand-computed replays, and the harness's promise that
a baseline's answer sees only what the pipeline had seen at that moment."""

from __future__ import annotations

import random
from itertools import count

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.live_replay import (
    AnswerFirst,
    Plan,
    PrequentialRun,
    Replay,
    _rounds,
    event_cases,
    score_baseline,
)
from retrain.online_baselines import (
    BASELINES,
    VSKNN,
    BaselineSpec,
    Cooc,
    Latest,
    LatestCategoryCooc,
    LatestCooc,
)
from retrain.popularity import Popularity
from streamrec.errors import StreamrecError
from streamrec.events import Event, EventType

DAY_S = 86_400.0  # a half-life long enough that counts are plain counts
_ids = count()


def event(user_id: str, item_id: str, ts_ms: int = 0, kind: EventType = EventType.CLICK) -> Event:
    return Event(f"e{next(_ids)}", user_id, item_id, kind, ts_ms)


def fed(baseline: Latest | Cooc | VSKNN, pairs: str) -> None:
    """Observe 'user:item' pairs, space-separated, in order, all at time 0."""
    for pair in pairs.split():
        user_id, item_id = pair.split(":")
        baseline.observe(event(user_id, item_id))


# --- popularity fill -------------------------------------------------------------


def test_popularity_ranks_by_decayed_count_and_fills_around_a_list() -> None:
    popularity = Popularity(half_life_s=1.0)
    for e in [event("u", "a", 0), event("v", "a", 0), event("w", "b", 500), event("x", "c", 2000)]:
        popularity.observe(e)
    # Seen from t = 2 s: a = 2 · 2^-2 = 0.5, b = 2^-1.5 ≈ 0.35, c = 1.
    assert popularity.ranked(3) == ["c", "a", "b"]
    assert popularity.fill(["a"], 3) == ["a", "c", "b"]
    assert popularity.fill(["z", "y", "x", "w"], 3) == ["z", "y", "x"]
    assert popularity.fill([], 5) == ["c", "a", "b"]  # only three items are known


def test_popularity_ties_go_to_the_smaller_id_and_counts_survive_a_rebase() -> None:
    popularity = Popularity(half_life_s=0.001)  # 1 ms: a million ms is far past a float
    for e in [event("u", "b", 0), event("u", "a", 0)]:
        popularity.observe(e)
    assert popularity.ranked(2) == ["a", "b"]
    popularity.observe(event("u", "b", 1_000_000))
    assert popularity.ranked(2) == ["b", "a"]
    popularity.observe(event("v", "a", 1_000_000))
    popularity.observe(event("w", "a", 1_000_000))
    assert popularity.ranked(2) == ["a", "b"]


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.integers(min_value=0, max_value=5_000)),
        max_size=60,
    )
)
def test_the_top_items_kept_at_hand_are_the_top_of_all_items(steps: list[tuple[str, int]]) -> None:
    kept, everything = Popularity(1.0, keep=3), Popularity(1.0, keep=100)
    now_ms = 0
    for item_id, gap_ms in steps:
        now_ms += gap_ms
        for popularity in (kept, everything):
            popularity.observe(event("u", item_id, now_ms))
        assert kept.ranked(3) == everything.ranked(3)


# --- latest, co-occurrence, blends -------------------------------------------------


def test_latest_lists_the_users_distinct_items_latest_first_then_popular_ones() -> None:
    latest = Latest(DAY_S)
    fed(latest, "u:a u:b u:a u:c v:d v:d w:e")
    # Popularity: a 2, d 2, b 1, c 1, e 1 (ties by id).
    assert latest.recommend("u", 5) == ["c", "a", "b", "d", "e"]
    assert latest.recommend("u", 2) == ["c", "a"]
    assert latest.recommend("nobody", 3) == ["a", "d", "b"]


def test_cooc_counts_pairs_with_the_previous_distinct_items_and_weights_by_recency() -> None:
    cooc = Cooc(DAY_S)
    fed(cooc, "p:a p:b p:c v:a v:d w:a w:c x:e x:e")
    # Counts: a-b 1, a-c 2 (p and w), b-c 1, a-d 1; e with nothing (e after e is no pair).
    # w's last items: c (weight 1), a (1/2): from c b 1, a 2; from a b .5, c 1, d .5.
    assert cooc.scores("w") == {"b": 1.5, "a": 2.0, "c": 1.0, "d": 0.5}
    # Then popularity: a 3, c 2, e 2, b 1, d 1.
    assert cooc.recommend("w", 5) == ["a", "b", "c", "d", "e"]
    assert cooc.recommend("x", 3) == ["a", "c", "e"]


def test_cooc_links_an_item_only_with_the_last_five_distinct_items_before_it() -> None:
    cooc = Cooc(DAY_S)
    fed(cooc, "y:i1 y:i2 y:i3 y:i4 y:i5 y:i6 y:i2 y:i7 z:i7")
    # Before i7, y's last five distinct items are i2 i6 i5 i4 i3: i1 is the sixth.
    assert set(cooc.scores("z")) == {"i2", "i3", "i4", "i5", "i6"}


def test_the_blends_order_own_items_and_co_occurrence_differently() -> None:
    pairs = "p1:b p1:c p2:b p2:c p3:b p3:c w:a w:c x:z x:z x:z x:z x:z"
    blends = {}
    for blend in ("latest-first", "cooc-first", "sum"):
        blends[blend] = LatestCooc(DAY_S, blend)
        fed(blends[blend], pairs)
    cooc = Cooc(DAY_S)
    fed(cooc, pairs)
    # w: own items c, a; co-occurrence b 3, a 1, c .5 (c-b 3 from c, c from a at 1/2).
    assert cooc.recommend("w", 3) == ["b", "a", "c"]
    assert blends["latest-first"].recommend("w", 3) == ["c", "a", "b"]
    assert blends["cooc-first"].recommend("w", 3) == ["b", "a", "c"]
    # Sum: c .5/3 + 1 = 1.17, b 3/3 = 1, a 1/3 + 1/2 = .83.
    assert blends["sum"].recommend("w", 3) == ["c", "b", "a"]
    # The fourth slot is the most popular item not listed yet.
    assert [blends[b].recommend("w", 4)[3] for b in blends] == ["z", "z", "z"]


def test_latest_then_the_latest_items_category_then_co_occurrence() -> None:
    model = LatestCategoryCooc(DAY_S)

    def touch(user_id: str, item_id: str, category: str) -> None:
        model.observe(
            Event(
                f"e{next(_ids)}",
                user_id,
                item_id,
                EventType.CLICK,
                0,
                context={"category_id": category},
            )
        )

    # Shoes: s2 three times, s1 twice (one with w); hats: h1; w also saw h1 then s1.
    for user_id, item_id, category in [
        ("p", "s2", "shoes"), ("q", "s2", "shoes"), ("r", "s2", "shoes"),
        ("p", "s1", "shoes"), ("q", "h1", "hats"), ("q", "b9", "bags"),
        ("w", "h1", "hats"), ("w", "s1", "shoes"),
    ]:  # fmt: skip
        touch(user_id, item_id, category)
    # Own (s1, h1), then shoes by count (s2; s1 listed), then co-occurrence (b9
    # with h1 through q), then popularity.
    assert model.recommend("w", 4) == ["s1", "h1", "s2", "b9"]
    # An item never seen has no category yet: a newcomer's list is popularity.
    assert model.recommend("nobody", 2) == ["s2", "h1"]


# --- V-SKNN ----------------------------------------------------------------------


def vsknn(**params: int) -> VSKNN:
    model = VSKNN(DAY_S, **params)
    fed(model, "p:a p:b q:b q:c s:a s:d r:x r:y u:a u:b")
    return model


def test_vsknn_scores_items_by_neighbour_similarity_and_recency_of_the_shared_item() -> None:
    # u = [a, b]: position weights a 1/2, b 1. Neighbours: p {a,b} (.5 + 1)/2 = .75,
    # q {b,c} 1/2 = .5, s {a,d} .5/2 = .25 (shared a is 2 steps back: score weight 1/2).
    # a .75 + .125, b .75 + .5, c .5, d .125; then popularity a 3, b 3, c, d, x, y.
    assert vsknn().recommend("u", 6) == ["b", "a", "c", "d", "x", "y"]


def test_vsknn_samples_the_most_recent_sessions_and_keeps_the_k_most_similar() -> None:
    # Sample of 1: s, the session with the latest event: a and d .125 each.
    assert vsknn(sample_size=1).recommend("u", 4) == ["a", "d", "b", "c"]
    # One neighbour: p, the most similar: a and b .75 each.
    assert vsknn(k=1).recommend("u", 2) == ["a", "b"]


def test_vsknn_weights_a_repeated_item_by_its_latest_position() -> None:
    model = vsknn()
    model.observe(event("u", "a"))
    # u = [a, b, a]: a 3/3, b 2/3. p (1 + 2/3)/2, q (2/3)/2 with b 2 steps back,
    # s 1/2: a .83 + .5, b .83 + .17, c .17, d .5.
    assert model.recommend("u", 4) == ["a", "b", "d", "c"]


def test_vsknn_without_history_or_neighbours_answers_from_popularity() -> None:
    model = vsknn()
    assert model.recommend("nobody", 3) == ["a", "b", "c"]
    model.observe(event("n", "new"))
    assert model.recommend("n", 3) == ["a", "b", "c"]


# --- the harness -----------------------------------------------------------------


def test_cases_follow_the_users_true_history_warm_up_included() -> None:
    replay = Replay(
        "t",
        [event("u", "a")],
        [
            event("u", "a"),
            event("u", "b", kind=EventType.PURCHASE),
            event("v", "c"),
            event("v", "c"),
            event("v", "d"),
        ],
    )
    cases, types = event_cases(replay)
    assert cases.tolist() == ["repeat", "new_item", "no_history", "repeat", "new_item"]
    assert types.tolist() == ["click", "purchase", "click", "click", "click"]


def test_latest_on_a_small_replay_scores_and_breaks_down_as_computed_by_hand() -> None:
    replay = Replay(
        "t",
        [event("u", "a"), event("u", "b")],
        [event("u", "a", 1), event("v", "c", 2), event("u", "c", 3)],
    )
    result = score_baseline(replay, "latest", DAY_S)
    # u:a answered [b, a]: rank 2. v:c (no history) answered [a, b]: a miss. u:c comes
    # in the second round, after v:c was observed: [a, b, c], rank 3.
    assert result.hits.tolist() == [1, 0, 1]
    assert np.allclose(result.reciprocal_ranks, [1 / 2, 0, 1 / 3])
    breakdown = PrequentialRun([], [result], *event_cases(replay)).breakdown()["latest"]
    assert breakdown == {
        "repeat": {"events": 1, "hr20": 100.0, "mrr20": 50.0},
        "new_item": {"events": 1, "hr20": 100.0, "mrr20": 33.33},
        "no_history": {"events": 1, "hr20": 0.0, "mrr20": 0.0},
        "click": {"events": 3, "hr20": 66.67, "mrr20": 27.78},
    }


@pytest.mark.parametrize("name", list(BASELINES))
def test_no_baseline_answers_with_an_item_it_could_only_know_from_the_future(name: str) -> None:
    # z is u's first scored item and then everyone's; before it, only p was seen.
    scored = [event("u", "z", 1), *(event(f"v{i}", "z", 2 + i) for i in range(5))]
    replay = Replay("t", [event("x", "p")], [*scored, event("u", "z", 10)])
    result = score_baseline(replay, name, DAY_S)
    # The first round is answered before any of it is observed: z is nobody's yet.
    # u's second z, in the next round, is known to every baseline (popular, and u's).
    assert result.hits.tolist() == [0, 0, 0, 0, 0, 0, 1]


def test_answer_first_refuses_to_observe_before_answering_or_to_answer_too_late() -> None:
    guarded = AnswerFirst(Latest(DAY_S))
    guarded.warm(event("u", "a"))
    first, second = event("u", "b", 1), event("u", "c", 2)
    with pytest.raises(StreamrecError, match="observed before it was answered for"):
        guarded.observe(0, first)
    guarded.answer(0, first, 20)
    guarded.observe(0, first)
    with pytest.raises(StreamrecError, match="observed before it was answered for"):
        guarded.observe(0, first)
    guarded.answer(1, second, 20)
    guarded.observe(1, second)
    with pytest.raises(StreamrecError, match="after user u's event 1 was observed"):
        guarded.answer(0, first, 20)
    with pytest.raises(StreamrecError, match="after scoring began"):
        guarded.warm(event("w", "a"))


def test_with_the_purchase_filter_a_baseline_leaves_out_what_the_user_bought() -> None:
    """The pipeline drops bought items by default; the baselines it is compared with
    follow the same rule, and still answer k items."""
    for exclude, expected in ((False, ["b", "a"]), (True, ["a", "c"])):
        guarded = AnswerFirst(Latest(DAY_S), exclude_purchased=exclude)
        for e in (event("u", "a", 0), event("u", "b", 1, EventType.PURCHASE), event("w", "c", 2)):
            guarded.warm(e)
        assert guarded.answer(0, event("u", "x", 3), 2) == expected


class _Spy:
    """A baseline that remembers which scored events it had observed at each answer."""

    def __init__(self, scored: list[Event]) -> None:
        self.index = {e.event_id: i for i, e in enumerate(scored)}
        self.observed: set[int] = set()
        self.seen_at_answer: list[set[int]] = []

    def recommend(self, user_id: str, k: int) -> list[str]:
        self.seen_at_answer.append(set(self.observed))
        return []

    def observe(self, event: Event) -> None:
        if event.event_id in self.index:
            self.observed.add(self.index[event.event_id])


def test_each_answer_sees_earlier_windows_and_earlier_rounds_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(0)
    scored = [event(f"u{rng.randrange(30)}", f"i{rng.randrange(50)}", t) for t in range(400)]
    spies: list[_Spy] = []

    def build(half_life_s: float) -> _Spy:
        spies.append(_Spy(scored))
        return spies[-1]

    monkeypatch.setitem(BASELINES, "spy", BaselineSpec("spy", "spy", build))
    window = 64
    score_baseline(Replay("t", [], scored), "spy", DAY_S, Plan(window=window))
    # (window, round) of each scored event, in the order the harness answers them.
    position: dict[int, tuple[int, int]] = {}
    for start in range(0, len(scored), window):
        for r, step in enumerate(_rounds(scored, start, min(start + window, len(scored)))):
            position.update({index: (start, r) for index, _ in step})
    assert len(spies[0].seen_at_answer) == len(scored)
    for index, seen in zip(position, spies[0].seen_at_answer, strict=True):
        # Exactly every event of an earlier window or an earlier round of this one.
        assert seen == {i for i, at in position.items() if at < position[index]}
        assert all(i < index for i in seen if scored[i].user_id == scored[index].user_id)
