"""The Redis state layout, against a real Redis: dedup, caps, event-time order, decay."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamrec.events import Event, EventType
from streamrec.features import EVENT_TYPES
from streamrec.keys import (
    POPULARITY_SEQ_KEY,
    is_user_key,
    item_popularity_key,
    recommended_key,
    user_arm_counts_key,
    user_vector_key,
)
from streamrec.settings import Settings
from streamrec.state import (
    POPULARITY_CHANGED_MAX,
    Applied,
    CachedVector,
    StateStore,
    WriteBack,
    parse_recent_member,
)

HOUR_MS = 3_600_000


@pytest.fixture
def store(any_store: StateStore) -> StateStore:
    """Every test here runs on a single Redis and on a Redis Cluster."""
    return any_store


CLICK = EVENT_TYPES.index(EventType.CLICK)


def ev(
    n: int,
    user: str = "u",
    item: str = "i",
    kind: EventType = EventType.CLICK,
    ts: int | None = None,
) -> Event:
    return Event(f"e{n}", user, item, kind, ts if ts is not None else 1_000_000 + n * 1000)


async def test_a_redelivered_event_is_applied_once(store: StateStore) -> None:
    assert await store.apply_events([ev(1), ev(2)]) == [Applied.APPLIED, Applied.APPLIED]
    assert await store.apply_events([ev(2), ev(3), ev(3)]) == [
        Applied.DUPLICATE,
        Applied.APPLIED,
        Applied.DUPLICATE,
    ]
    state = await store.read_user("u")
    assert [e.event_id for e in state.recent_events] == ["e1", "e2", "e3"]
    assert state.counts_by_type == {"click": 3}
    assert state.item_counts == {"i": {"click": 3}}


async def test_recent_events_are_capped_and_ordered_by_event_time(store: StateStore) -> None:
    cap = store.settings.recent_events_max
    events = [ev(n, item=f"i{n}") for n in range(cap + 10)]
    random.Random(7).shuffle(events)
    await store.apply_events(events)
    state = await store.read_user("u")
    assert [e.event_id for e in state.recent_events] == [f"e{n}" for n in range(10, cap + 10)]
    # A late event newer than the oldest kept lands in its place; an older one falls out.
    await store.apply_events([ev(1000, ts=1_000_000 + 20_500), ev(1001, ts=0)])
    state = await store.read_user("u")
    ids = [e.event_id for e in state.recent_events]
    assert len(ids) == cap
    assert ids.index("e1000") == ids.index("e20") + 1
    assert "e1001" not in ids
    assert state.last_ts_ms == 1_000_000 + (cap + 9) * 1000


async def test_purchases_are_a_filter_set(store: StateStore) -> None:
    await store.apply_events(
        [
            ev(1, item="a", kind=EventType.PURCHASE),
            ev(2, item="b"),
            ev(3, item="c", kind=EventType.PURCHASE),
        ]
    )
    state = await store.read_user("u")
    assert state.purchased == {"a", "c"}
    assert state.counts_by_type == {"purchase": 2, "click": 1}


async def test_user_item_counts_keep_only_the_most_recent_items(
    make_settings: Callable[..., Settings],
) -> None:
    store = StateStore(make_settings("caps", user_items_max=3, purchased_max=2))
    try:
        events = [ev(n, item=f"i{n}", kind=EventType.PURCHASE) for n in range(5)]
        events.append(ev(9, item="i1", ts=2_000_000))  # i1 becomes the most recent again
        await store.apply_events(events)
        state = await store.read_user("u")
        assert set(state.item_counts) == {"i1", "i3", "i4"}
        # i1 was evicted when i4 arrived; the later click starts it afresh.
        assert state.item_counts["i1"] == {"click": 1}
        assert state.purchased == {"i3", "i4"}
    finally:
        await store.redis.flushdb()
        await store.close()


async def test_popularity_decays_by_event_time_whatever_the_arrival_order(
    store: StateStore,
) -> None:
    half_life_ms = store.settings.popularity_half_life_s * 1000
    times = [0, half_life_ms, 2 * half_life_ms, 2 * half_life_ms, 5 * half_life_ms]
    ordered = [ev(n, user=f"u{n}", item="a", ts=int(t)) for n, t in enumerate(times)]
    shuffled = [ev(100 + n, user=f"u{n}", item="b", ts=int(t)) for n, t in enumerate(times)]
    random.Random(3).shuffle(shuffled)
    await store.apply_events(ordered + shuffled)

    now = int(5 * half_life_ms)
    # Hand-computed: 2^-5 + 2^-4 + 2 * 2^-3 + 1
    expected = 1 / 32 + 1 / 16 + 2 / 8 + 1
    a, b = await store.read_item_popularity(["a", "b"], now)
    assert a[CLICK] == pytest.approx(expected, rel=1e-12)
    assert b[CLICK] == pytest.approx(expected, rel=1e-12)
    (later,) = await store.read_item_popularity(["a"], now + int(half_life_ms))
    assert later[CLICK] == pytest.approx(expected / 2, rel=1e-12)


async def test_trending_ranks_by_decayed_count_and_survives_a_rebase(store: StateStore) -> None:
    hl = int(store.settings.popularity_half_life_s * 1000)
    await store.apply_events([ev(1, user="x", item="old", ts=0), ev(2, user="y", item="old", ts=1)])
    # 300 half-lives later (past the rebase point), one event outranks two old ones.
    await store.apply_events([ev(3, user="z", item="new", ts=300 * hl)])
    top = await store.trending(EventType.CLICK, 10)
    assert [item for item, _ in top] == ["new", "old"]
    assert all(math.isfinite(score) and score >= 0 for _, score in top)
    assert top[0][1] < 2.0**300


async def test_every_key_is_capped_or_expires(store: StateStore) -> None:
    await store.apply_events(
        [ev(n, user=f"u{n % 3}", item=f"i{n % 5}", kind=list(EventType)[n % 5]) for n in range(40)]
    )
    keys = [k.decode() async for k in store.redis.scan_iter("*")]
    assert keys
    for key in keys:
        ttl = await store.redis.ttl(key)
        if key in (store.keys.new_events, store.keys.popularity_seq):
            continue  # one counter each
        if key == store.keys.popularity_changed:
            assert await store.redis.zcard(key) <= POPULARITY_CHANGED_MAX
            continue
        if key == store.keys.trending_epoch:
            continue
        if key in store.keys.trending.values():
            # Global trending sets are capped by size, not time.
            assert await store.redis.zcard(key) <= store.settings.trending_max_items
            continue
        assert ttl > 0, f"{key} never expires"


async def test_the_popularity_change_log_names_what_changed_or_says_it_cannot(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, _ = await store.popularity_changes(None)
    await store.apply_events([ev(1, item="a"), ev(2, item="b")])
    seq, changed = await store.popularity_changes(start)
    assert seq > start and sorted(changed or []) == ["a", "b"]
    assert await store.popularity_changes(seq) == (seq, [])
    await store.apply_events([ev(1, item="a")])  # a duplicate changes nothing
    assert await store.popularity_changes(seq) == (seq, [])
    await store.apply_events([ev(3, item="c")])
    assert (await store.popularity_changes(seq))[1] == ["c"]
    # Trimmed past what a reader saw: it must read everything again.
    monkeypatch.setattr("streamrec.state.POPULARITY_CHANGED_MAX", 2)
    await store.apply_events([ev(4, item="d"), ev(5, item="e")])
    assert (await store.popularity_changes(seq))[1] is None
    assert await store.popularity_changes(seq + 2) == (seq + 2, [])
    # Redis lost the counter (a restart without persistence): read everything.
    await store.redis.delete(POPULARITY_SEQ_KEY)
    assert (await store.popularity_changes(seq))[1] is None


async def test_popularity_fields_hold_the_reference_time(store: StateStore) -> None:
    await store.apply_events([ev(1, ts=5000), ev(2, user="v", ts=4000)])
    fields = await store.redis.hgetall(item_popularity_key("i"))
    assert int(float(fields[b"click:ref"])) == 5000


async def test_any_ids_round_trip_through_the_state(store: StateStore) -> None:
    odd = ["3:x", "{u}", "ünï cödé", 'q"uote\\', "a" * 128, "12:34:56", "\n"]
    events = [
        Event(f"{odd[n]}-e", odd[n], odd[-1 - n], EventType.PURCHASE, 1000 + n)
        for n in range(len(odd))
    ]
    assert all(await store.apply_events(events))
    for event in events:
        state = await store.read_user(event.user_id)
        assert [(e.event_id, e.item_id, e.type) for e in state.recent_events] == [
            (event.event_id, event.item_id, event.type)
        ]
        assert state.purchased == {event.item_id}
        assert state.item_counts == {event.item_id: {"purchase": 1}}


@given(st.text(), st.text(), st.sampled_from([t.value for t in EventType]))
def test_a_recent_events_member_parses_back_whatever_its_ids(
    event_id: str, item_id: str, type_value: str
) -> None:
    # As the apply script writes it: byte lengths, so an id may hold ":" or digits.
    raw_event, raw_item = event_id.encode(), item_id.encode()
    member = b"%d:%b%d:%b%b" % (
        len(raw_event),
        raw_event,
        len(raw_item),
        raw_item,
        type_value.encode(),
    )
    assert parse_recent_member(member) == (event_id, item_id, type_value)


async def test_the_dedup_window_forgets_old_event_ids(
    make_settings: Callable[..., Settings],
) -> None:
    store = StateStore(make_settings("dedup-window", dedup_ttl_s=1))
    try:
        assert await store.apply_events([ev(1)]) == [Applied.APPLIED]
        assert await store.apply_events([ev(1)]) == [Applied.DUPLICATE]
        await asyncio.sleep(1.2)
        # Past the window the id is new again (the window bounds memory, not history).
        assert await store.apply_events([ev(1)]) == [Applied.APPLIED]
    finally:
        await store.redis.flushdb()
        await store.close()


async def test_feed_slots_rate_limit_each_user(store: StateStore) -> None:
    assert await store.acquire_feed_slots(["a", "b"], 300) == [True, True]
    # The key the feed had when it was `streamrec publish`: a rename moves no key.
    assert await store.redis.exists("sr:u:{a}:pub") == 1
    assert await store.acquire_feed_slots(["a", "c"], 300) == [False, True]
    await asyncio.sleep(0.35)
    assert await store.acquire_feed_slots(["a"], 300) == [True]
    assert await store.acquire_feed_slots(["a", "a"], 0) == [True, True]  # 0 turns it off


async def test_applied_events_are_counted_for_the_retraining_trigger(store: StateStore) -> None:
    await store.apply_events([ev(1), ev(2), ev(2)])
    assert await store.new_event_count() == 2
    assert await store.take_new_event_count() == 2
    assert await store.take_new_event_count() == 0


async def test_a_reader_behind_the_newest_event_sees_it_undecayed(store: StateStore) -> None:
    await store.apply_events([ev(1, ts=10**12)])
    (popularity,) = await store.read_item_popularity(["i"], now_ms=0)
    assert popularity.tolist() == [1.0 if t == EventType.CLICK else 0.0 for t in EVENT_TYPES]


async def test_popularity_of_unseen_items_is_empty(store: StateStore) -> None:
    await store.apply_events([ev(1, item="seen", kind=EventType.PURCHASE), ev(2, item="seen")])
    assert (await store.read_item_popularity([], 5000)).shape == (0, len(EVENT_TYPES))
    seen, unseen = await store.read_item_popularity(["seen", "never"], 5000)
    assert {t for t, v in zip(EVENT_TYPES, seen, strict=True) if v} == {
        EventType.CLICK,
        EventType.PURCHASE,
    }
    assert not unseen.any()


async def test_recommended_items_are_capped_and_expire_with_the_hit_window(
    make_settings: Callable[..., Settings],
) -> None:
    store = StateStore(make_settings("state", hit_window_s=60, recommended_max=3))
    try:
        await store.apply_events([ev(1)])
        await store.record_recommended("u", ["old"], now_ms=0)
        await store.record_recommended("u", ["a", "b", "c", "d"], now_ms=61_000)
        key = recommended_key("u")
        kept = await store.redis.zrange(key, 0, -1)
        assert len(kept) == 3 and b"old" not in kept
        assert 0 < await store.redis.pttl(key) <= 60_000
    finally:
        await store.redis.flushdb()
        await store.close()


async def test_a_long_answer_is_remembered_whole(make_settings: Callable[..., Settings]) -> None:
    """More items than one ZADD of the write-back takes (500), and than Lua can unpack
    in one call: every one kept."""
    store = StateStore(make_settings("state", hit_window_s=60, recommended_max=6000))
    try:
        await store.apply_events([ev(1)])
        shown = [f"item-{n}" for n in range(5001)]
        await store.record_recommended("u", shown, now_ms=1_000)
        kept = await store.redis.zrange(recommended_key("u"), 0, -1)
        assert sorted(kept) == sorted(item.encode() for item in shown)
    finally:
        await store.redis.flushdb()
        await store.close()


async def test_nothing_is_recorded_when_the_hit_window_is_off(
    make_settings: Callable[..., Settings],
) -> None:
    store = StateStore(make_settings("state", hit_window_s=0))
    try:
        await store.record_recommended("u", ["a"], now_ms=0)
        assert not await store.redis.exists(recommended_key("u"))
    finally:
        await store.close()


async def test_many_answers_are_remembered_in_one_call(store: StateStore) -> None:
    await store.apply_events([ev(n, user="u1", ts=n * 500) for n in (1, 2)])
    await store.apply_events([ev(3, user="u2")])
    vector = CachedVector("v1", "2:1000", b"\x00\x01|\x02\x03")  # any bytes, "|" included
    await store.write_back(
        [
            WriteBack("u1", ["a", "b"], 1_000, vector),
            WriteBack("u2", ["c"], 1_000),
            WriteBack("u3", [], 0),
        ]
    )
    assert await store.redis.zrange(recommended_key("u1"), 0, -1) == [b"a", b"b"]
    assert await store.redis.zrange(recommended_key("u2"), 0, -1) == [b"c"]
    assert not await store.redis.exists(recommended_key("u3"), user_vector_key("u2"))
    # Nothing for a user without state: one never seen, or forgotten since the read.
    await store.write_back([WriteBack("nobody", ["a"], 1_000)])
    assert not await store.redis.exists(recommended_key("nobody"))
    raw = await store.redis.get(user_vector_key("u1"))
    assert isinstance(raw, bytes)
    assert CachedVector.from_bytes(raw) == vector


async def test_the_vector_refreshs_read_is_what_the_full_read_says(store: StateStore) -> None:
    """`read_vector_inputs` (the worker's refresh) gives the recent items and types,
    the state tag and the cached vector `read_users` (the server) gives, for users of
    many slots, late events, ids with separators, and users with no state."""
    users = ["u1", "u:2|x", "ü3", "u4"]
    await store.apply_events(
        [
            ev(
                n,
                user=users[n % 3],
                item=f"i{n % 5}|:",
                kind=EventType.PURCHASE if n % 4 else EventType.CLICK,
            )
            for n in range(30)
        ]
        + [ev(99, user="u1", item="late", ts=5)]
    )
    full = await store.read_users(users[:3])
    vector = CachedVector("v7", full[0].state_tag, b"\x00|\x01")
    await store.write_back([WriteBack("u1", [], 1_000, vector)])
    lean = await store.read_vector_inputs([*users, "u1"])
    full = await store.read_users([*users, "u1"])
    assert [u.user_id for u in lean] == [*users, "u1"]
    for mine, theirs in zip(lean, full, strict=True):
        assert mine.recent == [(e.item_id, e.type) for e in theirs.recent_events]
        assert mine.state_tag == theirs.state_tag
        assert mine.cached_vector == theirs.cached_vector
    assert lean[0].cached_vector == vector
    assert lean[3].recent == [] and lean[3].state_tag == "0:None"
    assert await store.read_vector_inputs([]) == []


async def test_an_items_first_event_time_is_kept_in_any_arrival_order_as_training_replays_it(
    store: StateStore,
) -> None:
    from retrain.popularity import ItemPopularity
    from streamrec.state import first_seen

    times = [5_000, 3_000, 9_000, 3_500]
    await store.apply_events([ev(n, user=f"u{n}", item="a", ts=t) for n, t in enumerate(times)])
    stored = await store.read_stored_popularity(["a", "never"])
    twin = ItemPopularity(store.settings.popularity_half_life_s)
    for t in times:
        twin.observe("a", EventType.CLICK, t)
    assert first_seen(stored).tolist() == [3_000, 0]
    assert twin.first_seen(["a", "never"]).tolist() == [3_000, 0]


async def test_a_vector_is_cached_only_for_the_state_it_was_computed_from(
    store: StateStore,
) -> None:
    await store.apply_events([ev(1, user="u1", ts=1000)])
    stale = CachedVector("v1", "0:None", b"\x00" * 8)  # read before the event
    await store.write_back([WriteBack("u1", [], 0, stale)])
    assert not await store.redis.exists(user_vector_key("u1"))
    fresh = CachedVector("v1", (await store.read_user("u1")).state_tag, b"\x00" * 8)
    await store.write_back([WriteBack("u1", [], 0, fresh)])
    assert await store.redis.exists(user_vector_key("u1"))
    # Read before the user was forgotten, written after: not cached, nor what was shown.
    await store.forget_user("u1")
    await store.write_back([WriteBack("u1", ["a"], 0, fresh)])
    assert not await store.redis.exists(user_vector_key("u1"), recommended_key("u1"))


async def test_forgetting_a_user_removes_every_key_of_theirs_and_only_theirs(
    store: StateStore,
) -> None:
    odd = "a*b}:x"  # glob characters and a brace: matched as written, nothing else
    for user in ("u1", odd, "u1}:ev", "u10", "a*b}:xy"):
        await store.apply_events([ev(1, user=user, kind=EventType.PURCHASE), ev(2, user=user)])
        await store.record_recommended(user, ["i"], now_ms=1)
        await store.acquire_feed_slots([user], 60_000)
    before = {cast(bytes, k).decode() for k in await store.redis.keys("*")}
    assert await store.forget_user("u1") == 9  # ev buy items cnt meta rec pub + 2 dedup
    assert await store.forget_user(odd) == 9
    after = {cast(bytes, k).decode() for k in await store.redis.keys("*")}
    gone = before - after
    assert len(gone) == 18 and all(k.startswith(("sr:u:{u1}:", "sr:u:{a*b}:x}:")) for k in gone)
    assert not {k for k in after if is_user_key(k, "u1") or is_user_key(k, odd)}
    assert (await store.read_user("u1")).recent_events == ()
    assert len((await store.read_user("u10")).recent_events) == 2
    assert len((await store.read_user("u1}:ev")).recent_events) == 2
    # Idempotent, and a user who never existed is no error.
    assert await store.forget_user("u1") == 0
    assert await store.forget_user("nobody") == 0
    # Many users in one SCAN: the same keys, and still only theirs.
    assert await store.forget_users(["u10", "nobody", "u1}:ev", "u10"]) == [9, 0, 9, 9]
    left = {cast(bytes, k).decode() for k in await store.redis.keys("sr:u:*")}
    assert left and all(k.startswith("sr:u:{a*b}:xy}:") for k in left)


async def test_an_arms_per_user_sums_follow_each_click(store: StateStore) -> None:
    """The apply script keeps each user's clicks and hits in their arm and moves the
    arm's sums over users of 1, clicks², hits² and clicks·hits by each click's change:
    they equal the sums over the users' final counts (streamrec/hit_rates.py)."""
    rng = random.Random(3)
    arms = {f"u{n}": "run1|control" if n < 3 else "run1|canary" for n in range(6)}
    await store.apply_events([ev(n, user=user) for n, user in enumerate(arms)])
    await store.write_back(
        [WriteBack(user, ["shown"], 2_000_000, arm=arm) for user, arm in arms.items()]
    )
    clicks = [
        ev(100 + n, user=rng.choice(list(arms)[:5]), item=rng.choice(["shown", "other"]),
           ts=2_000_000 + n)
        for n in range(60)
    ]  # fmt: skip
    await store.apply_events(clicks)
    by_user = {user: (0, 0) for user in arms}
    for click in clicks:
        c, h = by_user[click.user_id]
        by_user[click.user_id] = (c + 1, h + (click.item_id == "shown"))
    expected: dict[str, dict[str, int]] = {}
    for user, (c, h) in by_user.items():
        if c == 0:
            continue
        # Three users of each arm were answered once.
        sums = expected.setdefault(arms[user].split("|")[1], {"answers": 3})
        for name, value in {"users": 1, "clicks": c, "hits": h, "clicks_sq": c * c,
                            "hits_sq": h * h, "clicks_hits": c * h}.items():  # fmt: skip
            sums[name] = sums.get(name, 0) + value
    counts = await store.experiment_counts("run1")
    assert counts == expected
    c, h = by_user["u0"]
    assert await store.redis.hgetall(user_arm_counts_key("u0")) == {
        b"arm": b"run1|control",
        b"clicks": str(c).encode(),
        b"hits": str(h).encode(),
    }
    ttl = await store.redis.ttl(user_arm_counts_key("u0"))
    assert 0 < ttl <= store.settings.experiment_counts_ttl_s
    # In another run the user starts again from nothing; the first run's sums stay.
    await store.write_back([WriteBack("u0", ["shown"], 3_000_000, arm="run2|canary")])
    await store.apply_events([ev(200, user="u0", item="shown", ts=3_000_001)])
    assert await store.experiment_counts("run2") == {
        "canary": {"answers": 1, "users": 1, "clicks": 1, "hits": 1,
                   "clicks_sq": 1, "hits_sq": 1, "clicks_hits": 1}
    }  # fmt: skip
    assert await store.experiment_counts("run1") == counts
