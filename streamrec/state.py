"""The store of user and item state in Redis, and the only code that writes it.

The key layout is `streamrec/keys.py`, defined once for Python and for the Lua
scripts in `streamrec/lua/`; every key is capped or expires (docs/state.md gives
the memory per user and per item). An event is applied by one Lua script
(`lua/apply_events.lua`), atomically: dedup, then the user's
recent events, purchases, user-item counts, item popularity and trending, all
ordered by event time so a late event lands in its place and never overwrites
newer state.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar, cast

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamrec.cluster_apply import ClusterApply
from streamrec.covis import REBASE_HALF_LIVES as COVIS_REBASE_HALF_LIVES
from streamrec.covis import CovisRule
from streamrec.errors import ConfigError
from streamrec.events import EVENT_TYPE_OF, Event, EventType
from streamrec.features import EVENT_TYPES as POPULARITY_TYPES
from streamrec.features import RecentEvent
from streamrec.keys import (
    ALL_USER_KEYS,
    EVENT_TYPES,
    UserPart,
    experiment_key,
    global_keys,
    item_covis_key,
    item_popularity_key,
    lua_script,
    user_key,
    user_key_owner,
    user_keys_pattern,
    user_vector_key,
)
from streamrec.pipelined import PipelinedConnection
from streamrec.settings import Settings

# Trending scores are stored as 2^((ts - epoch) / half_life); after this many
# half-lives the epoch moves forward and every score is scaled down, so the
# doubles never overflow.
TRENDING_REBASE_HALF_LIVES = 256
T = TypeVar("T")
# Items kept in the change log; a reader further behind than this re-reads them all.
POPULARITY_CHANGED_MAX = 100_000


# A single Redis (with its replicas) or a Redis Cluster.
RedisClient = aioredis.Redis | RedisCluster

# Bounds one script call: Redis runs a script to the end before serving anyone else.
SCRIPT_MAX_EVENTS = 100


@dataclass(frozen=True, slots=True)
class WriteBack:
    """What is written back to a user's state after serving: the items the user was
    shown (for the online hit rate; none from the worker's vector refresh), and the
    user vector computed when the cache had none for this state."""

    user_id: str
    item_ids: Sequence[str]
    at_ms: int
    vector: CachedVector | None = None
    # `<run id>|<arm>` when an experiment's arm answered (`experiments.arm_tag`).
    arm: str | None = None


class Applied(IntEnum):
    """What applying one event did."""

    DUPLICATE = 0
    APPLIED = 1
    # Applied, and a click on an item recommended to this user within the hit window.
    HIT = 2
    # Not applied: the id was seen for this user with other content (`content_fingerprint`).
    CONFLICT = 3

    @property
    def changed_state(self) -> bool:
        return self in (Applied.APPLIED, Applied.HIT)


def content_fingerprint(event: Event) -> str:
    """A number from 2 to 9999 that changes with the event's content: what its dedup
    marker holds. Redis keeps integers below 10,000 as shared objects, so the marker
    costs no more memory than the "1" it replaced (which now means: not known); one
    conflicting event in about 10,000 goes unnoticed, taken for a redelivery."""
    e = event
    context = sorted(e.context.items()) if e.context else None  # key order is no content
    content = orjson.dumps(
        [e.item_id, e.type.value, e.ts_ms, e.session_id, context, e.price, e.quantity]
    )
    digest = hashlib.blake2b(content, digest_size=8).digest()
    return str(2 + int.from_bytes(digest, "big") % 9998)


@dataclass(frozen=True, slots=True)
class StoredEvent(RecentEvent):
    """One of a user's recent events as the store keeps it: what ranking takes
    (`features.RecentEvent`, so the server passes them on as they are) and the
    event's id."""

    event_id: str


@dataclass(frozen=True, slots=True)
class CachedVector:
    """A user vector (float32 bytes) that `model_version` computed from the user's
    state as it was at `state_tag` (`StoredUser.state_tag`)."""

    model_version: str
    state_tag: str
    values: bytes

    def to_bytes(self) -> bytes:
        # Version names and tags never contain "|" (registry names are [A-Za-z0-9._-]).
        return b"|".join((self.model_version.encode(), self.state_tag.encode(), self.values))

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedVector:
        version, tag, values = raw.split(b"|", 2)
        return cls(version.decode(), tag.decode(), values)


# An item's co-visitation links: (item, stored scores, epoch ms), as
# `covis.covis_scores` takes them.
ItemLinks = tuple[str, dict[str, float], int]


def state_tag(event_count: int, last_ts_ms: int | None) -> str:
    """`StoredUser.state_tag` from the user's event count and latest event time."""
    return f"{event_count}:{last_ts_ms}"


@dataclass(frozen=True, slots=True)
class VectorInputs:
    """What the user encoder and the vector cache need of a user's state
    (`StateStore.read_vector_inputs`): the recent events' items and types, oldest
    first, the state tag and the cached vector."""

    user_id: str
    recent: list[tuple[str, EventType]]
    state_tag: str
    cached_vector: CachedVector | None


@dataclass(frozen=True, slots=True)
class StoredUser:
    """A user's state as read from Redis; ranking sees it as `features.UserState`
    (the server converts, decaying the co-visitation scores to the request)."""

    user_id: str
    recent_events: tuple[StoredEvent, ...]
    purchased: frozenset[str]
    counts_by_type: dict[str, int]
    item_counts: dict[str, dict[EventType, int]] = field(default_factory=dict)
    last_ts_ms: int | None = None
    cached_vector: CachedVector | None = None
    # The co-visitation links of the user's latest distinct items, latest first.
    covis: tuple[ItemLinks, ...] = ()

    @property
    def state_tag(self) -> str:
        """Changes with every applied event (late ones included): a vector computed
        from a state with another tag is stale."""
        return state_tag(sum(self.counts_by_type.values()), self.last_ts_ms)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "recent_events": [
                {"event_id": e.event_id, "item_id": e.item_id, "type": e.type.value, "ts": e.ts_ms}
                for e in self.recent_events
            ],
            "purchased": sorted(self.purchased),
            "counts_by_type": self.counts_by_type,
            "item_counts": {
                item_id: {t.value: n for t, n in by_type.items()}
                for item_id, by_type in self.item_counts.items()
            },
            "last_ts": self.last_ts_ms,
        }


def _routing_keys(user_ids: Sequence[str]) -> list[str]:
    """KEYS of a script that reads users of one slot and builds their keys itself
    (`read_users.lua`, `read_vector_inputs.lua`): the first user's meta key, which
    routes the call on a Redis Cluster."""
    return [user_key(user_ids[0], UserPart.META)]


def _user_read_call(user_ids: Sequence[str], for_ranking: bool, covis_items: int) -> dict[str, Any]:
    """`read_users.lua`'s keys and arguments: the routing key, then one argument per
    user."""
    return {
        "keys": _routing_keys(user_ids),
        "args": ["1" if for_ranking else "0", covis_items, *user_ids],
    }


def _latest_items(recent: list[bytes], n: int) -> list[str]:
    """The user's `n` latest distinct items, from the recent events and their times (a
    flat member, score list): the items set's top, which holds each item's latest time."""
    by_time = sorted(
        (
            (float(recent[i + 1]), parse_recent_member(recent[i])[1])
            for i in range(0, len(recent), 2)
        ),
        reverse=True,
    )
    latest: list[str] = []
    for _, item_id in by_time:
        if item_id not in latest:
            latest.append(item_id)
            if len(latest) == n:
                break
    return latest


def parse_recent_member(member: bytes) -> tuple[str, str, str]:
    """(event_id, item_id, type) from `<len>:<event_id><len>:<item_id><type>` (byte lengths)."""
    length_text, _, rest = member.partition(b":")
    event_end = int(length_text)
    length_text, _, rest_after_id = rest[event_end:].partition(b":")
    item_end = int(length_text)
    return (
        rest[:event_end].decode(),
        rest_after_id[:item_end].decode(),
        rest_after_id[item_end:].decode(),
    )


# `StateStore.read_stored_popularity` rows hold one pair per event type, then the
# item's first event time at this slot.
FIRST_SEEN_SLOT = len(POPULARITY_TYPES)


def decay_popularity(stored: np.ndarray, now_ms: int, half_life_s: float) -> np.ndarray:
    """`StateStore.read_stored_popularity` rows brought forward to `now_ms`: one
    column per event type."""
    by_type = stored[..., :FIRST_SEEN_SLOT, :]
    # A reader whose clock is behind the newest event sees it undecayed.
    age_ms = np.maximum(0.0, now_ms - by_type[..., 1])
    decayed: np.ndarray = by_type[..., 0] * np.exp2(-age_ms / (half_life_s * 1000))
    return decayed


def first_seen(stored: np.ndarray) -> np.ndarray:
    """Each item's first event time (ms) from `StateStore.read_stored_popularity`
    rows; 0 where none is known."""
    first: np.ndarray = stored[..., FIRST_SEEN_SLOT, 0]
    return first


def _pairs(flat: list[bytes]) -> list[tuple[bytes, bytes]]:
    """[field, value, field, value, ...] as (field, value) pairs."""
    return list(zip(flat[::2], flat[1::2], strict=True))


def _decoded(members: list[bytes]) -> list[str]:
    """Each member as text. The links are the largest part of a user's state (a few
    hundred ids per request): one decode and split of them all costs half as much as
    one decode each; an id holding the separator (ids may hold any character)
    makes the count differ, and then they are decoded one by one."""
    split = b"\n".join(members).decode().split("\n")
    if len(split) == len(members):
        return split
    return [member.decode() for member in members]


def _link_scores(texts: list[bytes]) -> list[float]:
    """Co-visitation scores as Redis writes them (up to 17 significant digits) as
    floats. Python's float() takes ~0.4 µs for one of more than 15 digits (its exact
    slow path), ~60 µs for the ~170 link scores of a request; orjson's parser, as
    exact (the same double for every text), reads them as one JSON array in a
    quarter of that. "inf" is no JSON number: then one by one. (A "-0" would come
    back 0.0; link scores are sums of positive weights.)"""
    try:
        numbers = orjson.loads(b"[%b]" % b",".join(texts))
    except orjson.JSONDecodeError:
        return list(map(float, texts))
    return list(map(float, numbers))  # an integral score ("2") comes back an int


def _links(flat: list[bytes]) -> dict[str, float]:
    """An item's stored co-visitation links: [member, score, member, score, ...]."""
    return dict(zip(_decoded(flat[::2]), _link_scores(flat[1::2]), strict=True))


def _item_links(covis_raw: list[list[Any]]) -> tuple[ItemLinks, ...]:
    """`read_users.lua`'s linked items: per item [item, epoch, links and scores]."""
    return tuple(
        (item.decode(), _links(links), int(float(epoch))) for item, epoch, links in covis_raw
    )


def _user_state(
    user_id: str,
    recent_raw: list[tuple[bytes, bytes]],
    purchased_raw: list[bytes],
    counts_raw: list[tuple[bytes, bytes]],
    meta_raw: list[tuple[bytes, bytes]],
    vector_raw: bytes | None,
    covis: tuple[ItemLinks, ...],
) -> StoredUser:
    recent = []
    for member, score in recent_raw:
        event_id, item_id, type_value = parse_recent_member(member)
        recent.append(StoredEvent(item_id, EVENT_TYPE_OF[type_value], int(float(score)), event_id))
    item_counts: dict[str, dict[EventType, int]] = {}
    for field_name, count in counts_raw:
        type_value, _, item_id = field_name.decode().partition(":")
        item_counts.setdefault(item_id, {})[EVENT_TYPE_OF[type_value]] = int(count)
    meta = {k.decode(): v.decode() for k, v in meta_raw}
    return StoredUser(
        user_id=user_id,
        recent_events=tuple(recent),
        purchased=frozenset(p.decode() for p in purchased_raw),
        counts_by_type={k[2:]: int(v) for k, v in meta.items() if k.startswith("n:")},
        item_counts=item_counts,
        last_ts_ms=int(meta["last_ts"]) if "last_ts" in meta else None,
        cached_vector=CachedVector.from_bytes(vector_raw) if vector_raw else None,
        covis=covis,
    )


def covis_rule(settings: Settings) -> CovisRule:
    """The co-visitation rule these settings apply (and training replays)."""
    return CovisRule(
        window=settings.covis_window,
        max_neighbours=settings.covis_neighbours_max,
        half_life_s=settings.covis_half_life_s,
        backward=settings.covis_backward,
    )


def _apply_config(settings: Settings) -> bytes:
    """The apply script's limits, by name (ARGV[1])."""
    s, covis = settings, covis_rule(settings)
    return orjson.dumps(
        {
            "recent_max": s.recent_events_max,
            "purchased_max": s.purchased_max,
            "user_items_max": s.user_items_max,
            "user_ttl_s": s.user_ttl_s,
            "item_ttl_s": s.item_ttl_s,
            "dedup_ttl_s": s.dedup_ttl_s,
            "half_life_ms": int(s.popularity_half_life_s * 1000),
            "trending_max": s.trending_max_items,
            "rebase_half_lives": TRENDING_REBASE_HALF_LIVES,
            "max_future_skew_ms": s.max_future_skew_s * 1000,
            "hit_window_ms": s.hit_window_s * 1000,
            "changed_max": POPULARITY_CHANGED_MAX,
            "covis_window": covis.window if covis.max_neighbours > 0 else 0,
            "covis_max": covis.max_neighbours,
            "covis_half_life_ms": covis.half_life_ms,
            "covis_backward": covis.backward,
            "covis_rebase_half_lives": COVIS_REBASE_HALF_LIVES,
            "category_max": s.category_popular_max,
            "experiment_ttl_s": s.experiment_counts_ttl_s,
        }
    )


def redis_client(settings: Settings) -> RedisClient:
    """A client of `redis_url` whose every call has a reply and connect timeout: of a
    Redis Cluster when the settings say so (`Settings.redis_is_cluster`)."""
    if settings.redis_is_cluster:
        return cluster_client(settings)
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
    )


def cluster_client(settings: Settings, **options: Any) -> RedisCluster:
    """The Redis Cluster client: it learns every node from the URL's one, routes each
    call to its slot's primary and follows MOVED, ASK and failovers."""
    timeouts = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
    }
    # The URL's other nodes, to learn the cluster from when its first is down.
    seeds = [ClusterNode(host, port) for host, port in settings.redis_cluster_seeds[1:]]
    return RedisCluster.from_url(
        settings.redis_node_url, **(timeouts | {"startup_nodes": seeds or None} | options)
    )


# Why Redis takes no writes for now, whatever the event: an outage to wait out, never
# a reason to dead-letter an event (label `reason` of `streamrec_state_write_blocked`).
UNAVAILABLE_REASONS = ("unreachable", "oom", "readonly", "loading", "busy", "refused")
# Answers without a redis-py class of their own: a script running past the busy
# threshold, too few replicas for min-replicas-to-write, a failed background save.
_REFUSED_CODES = {"BUSY": "busy", "NOREPLICAS": "refused", "MISCONF": "refused"}


def unavailable_reason(exc: BaseException) -> str | None:
    """The `UNAVAILABLE_REASONS` entry for an error that says Redis cannot take writes
    now, else None (an error about this call's content). Each of these refuses a
    script call before its first write (Redis checks maxmemory and READONLY at a
    script's first write command, BUSY and LOADING before running it), so calling
    again once Redis recovers applies it exactly once."""
    if isinstance(exc, OutOfMemoryError):
        return "oom"
    if isinstance(exc, ReadOnlyError):
        return "readonly"
    if isinstance(exc, BusyLoadingError):
        return "loading"
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return "unreachable"
    if isinstance(exc, ClusterDownError | TryAgainError):
        return "refused"
    if isinstance(exc, ResponseError):
        return _REFUSED_CODES.get(str(exc).split(" ", 1)[0])
    return None


class StateStore:
    """The Redis connection pool and the scripts that write state. With `reads`, the
    users' state (`read_users`) is read through that one pipelined connection
    instead: the model server's per-request read (streamrec/pipelined.py)."""

    def __init__(
        self,
        settings: Settings,
        client: RedisClient | None = None,
        reads: PipelinedConnection | None = None,
    ) -> None:
        self.settings = settings
        self.redis: RedisClient = client or redis_client(settings)
        self.reads = reads
        self.cluster: ClusterApply | None = None
        # A cluster client fails a call outright when its node's pool is used up (it
        # does not wait): the fan-outs below keep to half of a node's connections,
        # whichever node every call of them goes to.
        self._cluster_calls: asyncio.Semaphore | None = None
        if isinstance(self.redis, RedisCluster):
            if settings.redis_wait_replicas > 0:
                # WAIT counts one connection's writes; a batch's reach every primary
                # over many connections (docs/operations.md, "Redis Cluster").
                raise ConfigError(
                    "STREAMREC_REDIS_WAIT_REPLICAS is not supported on a Redis Cluster yet"
                )
            self.cluster = ClusterApply(
                self.redis, settings.experiment_counts_ttl_s, settings.dedup_ttl_s
            )
            per_node = int(self.redis.nodes_manager.connection_kwargs.get("max_connections", 2))
            self._cluster_calls = asyncio.Semaphore(max(1, per_node // 2))
        self.keys = global_keys(self.cluster is not None)
        self._apply_script = self.redis.register_script(lua_script("apply_events"))
        self._write_back_script = self.redis.register_script(lua_script("write_back"))
        self._read_popularity_script = self.redis.register_script(lua_script("read_popularity"))
        self._read_users_script: Callable[..., Awaitable[Any]] = (
            reads.script(lua_script("read_users"))
            if reads is not None
            else self.redis.register_script(lua_script("read_users"))
        )
        self._read_vector_inputs_script = self.redis.register_script(
            lua_script("read_vector_inputs")
        )
        self._popularity_changes_script = self.redis.register_script(
            lua_script("popularity_changes")
        )
        self._trend_keys = [self.keys.trending[t] for t in EVENT_TYPES]
        self._popularity_types = [t.value for t in POPULARITY_TYPES]

    async def close(self) -> None:
        if self.reads is not None:
            await self.reads.close()
        await self.redis.aclose()

    async def ping(self) -> None:
        await self.redis.ping()

    async def apply_events(self, events: Sequence[Event]) -> list[Applied]:
        """Apply a batch in one round trip: per event, applied (a hit or not) or duplicate."""
        outcomes = await self.apply_events_each(events)
        for outcome in outcomes:
            if isinstance(outcome, RedisError):
                raise outcome
        return cast(list[Applied], outcomes)

    async def apply_events_each(self, events: Sequence[Event]) -> list[Applied | RedisError]:
        """`apply_events`, with per event its outcome or the error Redis answered for the
        script call that held it (`SCRIPT_MAX_EVENTS` events a call), so a caller can
        call again for exactly the events not applied. Unreachable Redis raises. With
        `redis_wait_replicas`, a batch the replicas did not acknowledge in time is
        refused whole (NOREPLICAS: the caller applies it again; its events are then
        duplicates)."""
        if not events:
            return []
        if self.cluster is not None:
            fingerprints = [content_fingerprint(e) for e in events]
            # Its steps' markers live as long as the dedup markers.
            config = orjson.loads(_apply_config(self.settings))
            config["marker_ttl_s"] = self.settings.dedup_ttl_s
            replies = await self.cluster.apply(events, fingerprints, orjson.dumps(config))
            return [r if isinstance(r, RedisError) else Applied(r) for r in replies]
        keys = [
            self.keys.trending_epoch,
            *self._trend_keys,
            self.keys.new_events,
            self.keys.popularity_seq,
            self.keys.popularity_changed,
        ]
        config = _apply_config(self.settings)
        assert isinstance(self.redis, aioredis.Redis)  # a single Redis: one call per batch
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(events), SCRIPT_MAX_EVENTS):
                batch = orjson.dumps(
                    [
                        (
                            e.event_id,
                            e.user_id,
                            e.item_id,
                            e.type.value,
                            e.ts_ms,
                            content_fingerprint(e),
                        )
                        for e in events[start : start + SCRIPT_MAX_EVENTS]
                    ]
                )
                await self._apply_script(keys=keys, args=[config, batch], client=pipe)
            wanted = self.settings.redis_wait_replicas
            if wanted > 0:
                # On the same connection as the writes: WAIT counts the replicas that
                # acknowledged this connection's last write.
                pipe.execute_command("WAIT", wanted, self.settings.redis_wait_timeout_ms)
            chunks = await pipe.execute(raise_on_error=False)
            if wanted > 0:
                acknowledged = chunks.pop()
                if not isinstance(acknowledged, int) or acknowledged < wanted:
                    refused = ResponseError(
                        f"NOREPLICAS {acknowledged} of the {wanted} replicas wanted "
                        f"acknowledged the batch within {self.settings.redis_wait_timeout_ms} ms"
                    )
                    return [refused] * len(events)
        outcomes: list[Applied | RedisError] = []
        for start, chunk in zip(range(0, len(events), SCRIPT_MAX_EVENTS), chunks, strict=True):
            if isinstance(chunk, RedisError):
                outcomes += [chunk] * len(events[start : start + SCRIPT_MAX_EVENTS])
            else:
                outcomes += [Applied(applied) for applied in chunk]
        return outcomes

    async def write_back(self, records: Sequence[WriteBack]) -> None:
        """After serving, in one script call for many users: what each was shown
        (for the online hit rate) and the user vectors computed."""
        window_ms = self.settings.hit_window_s * 1000
        head: list[str | int | bytes] = [
            window_ms,
            self.settings.recommended_max,
            self.settings.user_ttl_s,
            self.settings.experiment_counts_ttl_s,
            "0" if self.cluster is not None else "1",
        ]
        by_slot: dict[int, list[str | int | bytes]] = {}
        for record in records:
            items = record.item_ids if window_ms > 0 else ()
            if not items and record.vector is None:
                continue
            vector = record.vector.to_bytes() if record.vector is not None else b""
            slot = 0 if self.cluster is None else self._slot(user_vector_key(record.user_id))
            by_slot.setdefault(slot, [record.user_id]).extend(
                [record.user_id, record.at_ms, vector, record.arm or "", len(items), *items]
            )
        if not by_slot:
            return
        # Each call's first entry is a user of its slot: the key a cluster routes it by.
        answered = await self._fan_out(
            self._write_back_script(
                keys=[user_vector_key(str(args[0]))] if self.cluster is not None else [],
                args=[*head, *args[1:]],
            )
            for args in by_slot.values()
        )
        arms = [arm for call in answered for arm in call]
        if arms:
            await self._count_answers(arms)

    async def _count_answers(self, arms: Sequence[bytes]) -> None:
        """Redis Cluster: the experiment answers `write_back.lua` returned, counted in
        their runs' counters (other slots than the users')."""
        async with self.redis.pipeline() as pipe:
            for arm in arms:
                run_id, _, name = arm.decode().partition("|")
                pipe.hincrby(experiment_key(run_id), f"{name}:answers", 1)
                pipe.expire(experiment_key(run_id), self.settings.experiment_counts_ttl_s)
            await pipe.execute()

    async def record_recommended(self, user_id: str, item_ids: Sequence[str], now_ms: int) -> None:
        """Remember what the user was shown, for the online hit rate."""
        await self.write_back([WriteBack(user_id, item_ids, now_ms)])

    async def experiment_counts(self, run_id: str) -> dict[str, dict[str, int]]:
        """One experiment run's counters by arm: answers, clicks, hits, purchases."""
        counts: dict[str, dict[str, int]] = {}
        stored = cast(dict[bytes, bytes], await self.redis.hgetall(experiment_key(run_id)))
        for field_name, value in stored.items():
            arm, _, what = field_name.decode().rpartition(":")
            counts.setdefault(arm, {})[what] = int(value)
        return counts

    async def acquire_feed_slots(self, user_ids: Sequence[str], interval_ms: int) -> list[bool]:
        """Per-user rate limit shared by every feed replica: True where this caller
        may send the user's top-K now (no one did in the last `interval_ms`)."""
        return [wait_ms == 0 for wait_ms in await self.feed_slots(user_ids, interval_ms)]

    async def feed_slots(self, user_ids: Sequence[str], interval_ms: int) -> list[int]:
        """`acquire_feed_slots` that says, where the caller may not send yet, in how
        many milliseconds it may (0: now, and the slot is taken)."""
        if interval_ms <= 0:
            return [0] * len(user_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.set(user_key(user_id, UserPart.FEED), b"1", nx=True, px=interval_ms)
                pipe.pttl(user_key(user_id, UserPart.FEED))
            replies = await pipe.execute()
        return [
            0 if granted else max(1, int(ttl_ms))
            for granted, ttl_ms in zip(replies[::2], replies[1::2], strict=True)
        ]

    async def forget_user(self, user_id: str) -> int:
        """Delete every key of the user (`keys.user_keys_pattern`: state, cached vector,
        recommended items, feed marker, dedup markers); returns how many there were.
        A SCAN, not a list of names: dedup keys are named by event ids nobody keeps.
        The user's share of item popularity, co-visitation and trending stays: sums
        over many users that name no one (docs/operations.md, "Forgetting a user")."""
        (removed,) = await self.forget_users([user_id])
        return removed

    async def forget_users(self, user_ids: Sequence[str]) -> list[int]:
        """`forget_user` for many users with one SCAN: a SCAN walks the whole keyspace
        whatever its pattern (0.6 s per million keys, docs/operations.md), so a burst
        of forgets walks it once. Per user, the keys removed."""
        wanted = set(user_ids)
        pattern = user_keys_pattern(user_ids[0]) if len(wanted) == 1 else ALL_USER_KEYS
        removed = dict.fromkeys(wanted, 0)
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=pattern, count=1000):
            # Not another user's whose id starts with one of these and "}:".
            owner = user_key_owner(key.decode(), wanted)
            if owner is None:
                continue
            batch.append(key)
            removed[owner] += 1
            if len(batch) >= 500:
                await self.redis.unlink(*batch)
                batch = []
        if batch:
            await self.redis.unlink(*batch)
        return [removed[user_id] for user_id in user_ids]

    async def users_with_state(self, user_ids: Sequence[str]) -> list[bool]:
        """Per user, whether any event of theirs is in the state (one round trip)."""
        if not user_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.exists(user_key(user_id, UserPart.META))
            return [bool(found) for found in await pipe.execute()]

    async def take_new_event_count(self) -> int:
        """Events applied since the last call (by every worker), and start again at 0."""
        taken = await self.redis.getdel(self.keys.new_events)
        return int(taken or 0)

    async def new_event_count(self) -> int:
        return int(await self.redis.get(self.keys.new_events) or 0)

    async def read_user(self, user_id: str) -> StoredUser:
        """The user's whole state, and the cached user vector, in one round trip. One
        script call, so the state tag and the events it stands for are one snapshot."""
        (user,) = await self.read_users([user_id])
        return user

    async def read_users(
        self, user_ids: Sequence[str], *, for_ranking: bool = True
    ) -> list[StoredUser]:
        """`read_user` for many users in one script call: one round trip. With
        `for_ranking=False` only what the user encoder and the cache tag need (recent
        events, counts, last_ts, cached vector): purchases and user-item counts come
        back empty (the worker's vector refresh reads less still: `read_vector_inputs`)."""
        if not user_ids:
            return []
        covis_items = self.settings.covis_read_items if for_ranking else 0
        if self.cluster is not None:
            replies, covis = await self._read_users_by_slot(user_ids, for_ranking, covis_items)
        else:
            replies = await self._read_users_script(
                **_user_read_call(user_ids, for_ranking, covis_items)
            )
            covis = [_item_links(reply[5]) for reply in replies]
        users = []
        for user_id, (recent, purchased, counts, meta, vector, _), links in zip(
            user_ids, replies, covis, strict=True
        ):
            users.append(
                _user_state(
                    user_id,
                    _pairs(recent),
                    purchased,
                    _pairs(counts),
                    _pairs(meta),
                    vector,
                    links,
                )
            )
        return users

    async def read_vector_inputs(self, user_ids: Sequence[str]) -> list[VectorInputs]:
        """`VectorInputs` of many users in one script call per slot: for the stream
        worker's vector refresh, which needs neither the events' times nor purchases
        and item counts (`read_users` with them costs it twice the CPU per user)."""
        if not user_ids:
            return []
        if self.cluster is not None:
            replies = await self._per_slot(user_ids, self._read_vector_inputs_call)
        else:
            replies = await self._read_vector_inputs_call(user_ids)
        inputs = []
        for user_id, (members, count, last_ts, vector) in zip(user_ids, replies, strict=True):
            recent = []
            for member in members:
                _, item_id, type_value = parse_recent_member(member)
                recent.append((item_id, EVENT_TYPE_OF[type_value]))
            tag = state_tag(int(count), int(last_ts) if last_ts is not None else None)
            cached = CachedVector.from_bytes(vector) if vector else None
            inputs.append(VectorInputs(user_id, recent, tag, cached))
        return inputs

    async def _read_vector_inputs_call(self, user_ids: Sequence[str]) -> list[Any]:
        reply: list[Any] = await self._read_vector_inputs_script(
            keys=_routing_keys(user_ids), args=list(user_ids)
        )
        return reply

    async def _per_slot(
        self, user_ids: Sequence[str], call: Callable[[list[str]], Awaitable[list[Any]]]
    ) -> list[Any]:
        """Redis Cluster: `call` (a script call reading users of one slot, one reply
        per user) once per slot of the users, concurrently; the replies in the order
        of `user_ids`."""
        by_slot: dict[int, list[int]] = {}
        for index, user_id in enumerate(user_ids):
            by_slot.setdefault(self._slot(user_key(user_id, UserPart.META)), []).append(index)
        groups = list(by_slot.values())
        answers = await self._fan_out(call([user_ids[i] for i in group]) for group in groups)
        replies: list[Any] = [None] * len(user_ids)
        for group, answer in zip(groups, answers, strict=True):
            for index, reply in zip(group, answer, strict=True):
                replies[index] = reply
        return replies

    async def _read_users_by_slot(
        self, user_ids: Sequence[str], for_ranking: bool, covis_items: int
    ) -> tuple[list[Any], list[tuple[ItemLinks, ...]]]:
        """Redis Cluster: `read_users`'s script once per slot of the users (a script
        reads one slot), concurrently; the co-visitation links of each user's latest
        items (other slots) read after, per item. The script's replies, and each
        user's links."""
        replies = await self._per_slot(
            user_ids,
            lambda group: self._read_users_script(**_user_read_call(group, for_ranking, 0)),
        )
        if covis_items == 0:
            return replies, [() for _ in replies]
        latest = [_latest_items(reply[0], covis_items) for reply in replies]
        wanted = sorted({item for items in latest for item in items})
        links = dict(zip(wanted, await self._read_links(wanted), strict=True))
        return replies, [tuple(links[item] for item in items) for items in latest]

    async def _read_links(self, item_ids: Sequence[str]) -> list[ItemLinks]:
        """Each item's co-visitation links, as `_item_links` reads them from
        `read_users.lua` (the client gives the scores as floats)."""
        if not item_ids:
            return []
        async with self.redis.pipeline() as pipe:
            for item_id in item_ids:
                pipe.hget(item_popularity_key(item_id), "cv:epoch")
                pipe.zrange(item_covis_key(item_id), 0, -1, desc=True, withscores=True)
            replies = await pipe.execute()
        return [
            (item_id, {member.decode(): score for member, score in links}, int(float(epoch or 0)))
            for item_id, epoch, links in zip(item_ids, replies[::2], replies[1::2], strict=True)
        ]

    async def _fan_out(self, calls: Iterable[Awaitable[T]]) -> list[T]:
        """Script calls, one per slot, run at once: on a cluster no more in flight
        than `_cluster_calls` allows."""
        limit = self._cluster_calls
        if limit is None:
            return list(await asyncio.gather(*calls))

        async def bounded(call: Awaitable[T]) -> T:
            async with limit:
                return await call

        return list(await asyncio.gather(*(bounded(call) for call in calls)))

    def _slot(self, key: str) -> int:
        assert isinstance(self.redis, RedisCluster)
        return int(self.redis.keyslot(key))

    async def read_item_links(self, item_id: str, n: int) -> tuple[dict[str, float], int]:
        """The item's `n` strongest co-visitation links as stored, with their epoch
        (`covis.covis_scores` decays them); ({}, 0) when it has none. One round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(item_covis_key(item_id), 0, n - 1, withscores=True)
            pipe.hget(item_popularity_key(item_id), "cv:epoch")
            links, epoch = await pipe.execute()
        if not links or epoch is None:
            return {}, 0
        return {member.decode(): float(score) for member, score in links}, int(float(epoch))

    async def read_item_popularity(self, item_ids: Sequence[str], now_ms: int) -> np.ndarray:
        """Decayed popularity brought forward to `now_ms`: one row per item, one column
        per `features.EVENT_TYPES`, 0 where none (the table `ranking_features` takes)."""
        stored = await self.read_stored_popularity(item_ids)
        return decay_popularity(stored, now_ms, self.settings.popularity_half_life_s)

    async def read_stored_popularity(self, item_ids: Sequence[str]) -> np.ndarray:
        """Popularity as stored, (items, `features.EVENT_TYPES` + 1, 2): per type the
        value at its reference time and that time (ms), then the item's first event
        time and 0 (`FIRST_SEEN_SLOT`); zeros where none. One script call
        returns every value packed as doubles: one HGETALL per candidate spent ~45% of
        the model server's CPU in redis-py's reply parser."""
        shape = (len(item_ids), FIRST_SEEN_SLOT + 1, 2)
        if not item_ids:
            return np.zeros(shape)
        if self.cluster is not None:
            return await self._read_popularity_by_slot(item_ids, shape)
        encoded = await self._read_popularity_script(
            keys=[item_popularity_key(i) for i in item_ids], args=self._popularity_types
        )
        return np.frombuffer(encoded, dtype="<f8").reshape(shape).astype(np.float64)

    async def _read_popularity_by_slot(
        self, item_ids: Sequence[str], shape: tuple[int, int, int]
    ) -> np.ndarray:
        """Redis Cluster: the popularity script once per slot of the items, all at once;
        the answer waits for the slowest node."""
        by_slot: dict[int, list[int]] = {}
        for index, item_id in enumerate(item_ids):
            by_slot.setdefault(self._slot(item_popularity_key(item_id)), []).append(index)
        groups = list(by_slot.values())
        answers = await self._fan_out(
            self._read_popularity_script(
                keys=[item_popularity_key(item_ids[i]) for i in group],
                args=self._popularity_types,
            )
            for group in groups
        )
        table = np.zeros(shape)
        for group, encoded in zip(groups, answers, strict=True):
            rows = np.frombuffer(encoded, dtype="<f8").reshape((len(group), *shape[1:]))
            table[group] = rows
        return table

    async def popularity_changes(self, since: int | None) -> tuple[int, list[str] | None]:
        """(the change counter, the items whose popularity changed after the counter
        was `since`); None for the items when the log cannot tell (read them all).
        With `since=None` only the counter: where a full read starts from."""
        seq, changed = await self._popularity_changes_script(
            keys=[self.keys.popularity_seq, self.keys.popularity_changed],
            args=["" if since is None else since, POPULARITY_CHANGED_MAX],
        )
        return int(seq), None if changed is None else [item.decode() for item in changed]

    async def trending(self, event_type: EventType, k: int) -> list[tuple[str, float]]:
        """The top-k items by decayed count of one event type (relative scores)."""
        rows = cast(
            list[tuple[bytes, float]],
            await self.redis.zrevrange(self.keys.trending[event_type], 0, k - 1, withscores=True),
        )
        return [(member.decode(), float(score)) for member, score in rows]
