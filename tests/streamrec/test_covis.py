"""Co-visitation: the Redis apply script and its Python twin agree, counts are exact
and bounded, a redelivery counts once, and the links decay and rebase."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import cast

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from streamrec.covis import CovisRule, CovisTable, covis_scores, latest_distinct
from streamrec.events import Event, EventType
from streamrec.keys import item_covis_key
from streamrec.pipelined import PipelinedConnection
from streamrec.settings import Settings
from streamrec.state import StateStore, _link_scores, covis_rule

DAY_MS = 86_400_000


def ev(n: int, user: str, item: str, ts: int) -> Event:
    return Event(f"e{n}", user, item, EventType.CLICK, ts)


async def stored_links(
    store: StateStore, items: list[str]
) -> dict[str, tuple[dict[str, float], int]]:
    client = redis.Redis.from_url(store.settings.redis_url)
    out: dict[str, tuple[dict[str, float], int]] = {}
    for item in items:
        # The stubs type every reply as bytes or str; this client does not decode.
        links = cast(
            list[tuple[bytes, float]],
            client.zrange(item_covis_key(item), 0, -1, withscores=True),
        )
        if links:
            epoch = client.hget(f"sr:i:{{{item}}}:pop", "cv:epoch")
            out[item] = ({m.decode(): s for m, s in links}, int(epoch or 0))
    return out


async def test_hand_counted_links_for_one_user(store: StateStore) -> None:
    # One user touches a, b, a, c: window 5, backward 0.5, no decay within a second.
    await store.apply_events(
        [ev(1, "u", "a", 1000), ev(2, "u", "b", 1001), ev(3, "u", "a", 1002), ev(4, "u", "c", 1003)]
    )
    links = await stored_links(store, ["a", "b", "c"])
    half_life = store.settings.covis_half_life_s * 1000

    def at(ts: int, epoch: int) -> float:
        return math.pow(2, (ts - epoch) / half_life)

    a, a_epoch = links["a"]
    b, b_epoch = links["b"]
    c, c_epoch = links["c"]
    # b after a: a->b 1, b->a 0.5. a again: latest earlier distinct is b: b->a 1, a->b 0.5.
    # c: earlier a (d=1), b (d=2): a->c 1, b->c 1/2, c->a 0.5, c->b 0.25.
    assert a["b"] == pytest.approx(1 * at(1001, a_epoch) + 0.5 * at(1002, a_epoch))
    assert b["a"] == pytest.approx(0.5 * at(1001, b_epoch) + 1 * at(1002, b_epoch))
    assert a["c"] == pytest.approx(at(1003, a_epoch))
    assert b["c"] == pytest.approx(0.5 * at(1003, b_epoch))
    assert c == pytest.approx({"a": 0.5 * at(1003, c_epoch), "b": 0.25 * at(1003, c_epoch)})


async def test_redis_and_the_python_twin_agree_on_a_shuffled_replay(
    make_settings: Callable[..., Settings],
) -> None:
    store = StateStore(make_settings("covis-twin", covis_neighbours_max=4, covis_window=3))
    rng = random.Random(3)
    events = [
        ev(n, f"u{rng.randrange(6)}", f"i{rng.randrange(12)}", 10_000 + n * 997) for n in range(300)
    ]
    try:
        # Batches of a few, as the worker applies them; each event once.
        for start in range(0, len(events), 7):
            await store.apply_events(events[start : start + 7])
        twin = CovisTable(covis_rule(store.settings))
        for event in events:
            twin.apply(event.user_id, event.item_id, event.ts_ms)
        expected = twin.stored()
        got = await stored_links(store, [f"i{n}" for n in range(12)])
        assert set(got) == set(expected)
        for item, (scores, epoch) in expected.items():
            assert got[item][1] == epoch
            assert got[item][0] == pytest.approx(scores, rel=1e-12)
            assert len(got[item][0]) <= 4  # bounded
        # A redelivery of every event changes nothing.
        await store.apply_events(events)
        assert await stored_links(store, [f"i{n}" for n in range(12)]) == got
    finally:
        await store.redis.flushdb()
        await store.close()


async def test_the_model_server_read_returns_the_latest_items_links(
    make_settings: Callable[..., Settings],
) -> None:
    store = StateStore(make_settings("covis-read", covis_read_items=2))
    try:
        await store.apply_events(
            [ev(1, "v", "x", 1000), ev(2, "v", "y", 2000), ev(3, "u", "x", 3000),
             ev(4, "u", "z", 4000)]
        )  # fmt: skip
        user = await store.read_user("u")
        assert [item for item, _, _ in user.covis] == ["z", "x"]
        (_, z_links, _), (_, x_links, _) = user.covis
        assert set(z_links) == {"x"} and set(x_links) == {"y", "z"}
        total, latest = covis_scores([(s, e) for _, s, e in user.covis], 4000, 3 * 86400)
        assert latest == pytest.approx(
            {"x": z_links["x"] * 2 ** ((user.covis[0][2] - 4000) / (3 * DAY_MS))}
        )
        assert total["y"] == pytest.approx(
            0.5 * x_links["y"] * 2 ** ((user.covis[1][2] - 4000) / (3 * DAY_MS))
        )
        # The worker's vector refresh reads no links.
        (lean,) = await store.read_users(["u"], for_ranking=False)
        assert lean.covis == ()
    finally:
        await store.redis.flushdb()
        await store.close()


async def test_the_model_server_read_gives_every_stored_score_exactly(
    make_settings: Callable[..., Settings],
) -> None:
    store = StateStore(make_settings("covis-exact", covis_read_items=12))
    items = ["a", "3:x", "{i}", "ünï", 'q"uote\\', ",", "]", "\n", "1e5", "-0", ""]
    rng = random.Random(5)
    events = [
        ev(n, f"u{rng.randrange(3)}", rng.choice(items), 10_000 + n * 7919) for n in range(200)
    ]
    try:
        await store.apply_events(events)
        stored = await stored_links(store, items)
        # The model server reads through its pipelined connection (scores as
        # Redis's text), the other readers through redis-py (scores as floats).
        piped = StateStore(store.settings, reads=PipelinedConnection(store.settings.redis_url))
        users = [await reader.read_user(u) for reader in (store, piped) for u in ("u0", "u1", "u2")]
        await piped.close()
        for user in users:
            user_id = user.user_id
            assert len(user.covis) == len({e.item_id for e in events if e.user_id == user_id})
            for item, links, epoch in user.covis:
                want, want_epoch = stored[item]
                assert epoch == want_epoch
                assert {k: v.hex() for k, v in links.items()} == {
                    k: v.hex() for k, v in want.items()
                }
    finally:
        await store.redis.flushdb()
        await store.close()


@given(st.lists(st.floats(min_value=0.0, allow_nan=False)))
def test_link_scores_read_in_bulk_are_the_doubles_redis_wrote(values: list[float]) -> None:
    for text_of in ("%.17g", "%r"):  # Redis 7.0 writes the first, 7.2 the shortest
        texts = [(text_of % v).encode() for v in values]
        assert [v.hex() for v in _link_scores(texts)] == [float(t).hex() for t in texts]


def test_links_decay_and_rebase_without_changing_what_they_mean() -> None:
    rule = CovisRule(window=2, max_neighbours=10, half_life_s=1.0, backward=0.0)
    table = CovisTable(rule)
    table.apply("u", "a", 0)
    table.apply("u", "b", 0)  # a->b weight 1 at t=0
    table.apply("w", "a", 200_000)
    table.apply("w", "c", 200_000)  # 200 half-lives later: a->c weight 1, a rebase
    scores, epoch = table.neighbours("a")
    assert epoch > 0  # moved forward
    total, _ = covis_scores([(scores, epoch)], 200_000, rule.half_life_s)
    assert total["c"] == pytest.approx(1.0)
    assert total["b"] == pytest.approx(2.0**-200, rel=1e-9)


def test_neighbours_are_scored_strongest_first_ties_by_id() -> None:
    # The second item counts 1/2: a 1 + 0.5, b 2, c 1, d 2 / 2; no decay at the epoch.
    lists = [({"c": 1.0, "b": 2.0, "a": 1.0}, 0), ({"d": 2.0, "a": 1.0}, 0)]
    total, latest = covis_scores(lists, 0, 1.0)
    assert list(total.items()) == [("b", 2.0), ("a", 1.5), ("c", 1.0), ("d", 1.0)]
    assert list(latest.items()) == [("c", 1.0), ("b", 2.0), ("a", 1.0)]
    assert covis_scores([], 0, 1.0) == ({}, {})


def test_latest_distinct_items() -> None:
    assert latest_distinct(["a", "b", "a", "c", "c"], 2) == ["c", "a"]
    assert latest_distinct([], 3) == []
