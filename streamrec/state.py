"""Every Redis key streamrec writes, and the only code that writes them.

User keys share the hash tag `{user_id}`; every key is capped or expires (see
docs/state.md for the layout and the measured memory per user and per item).
An event is applied by one Lua script, atomically: dedup, then the user's
recent events, purchases, user-item counts, item popularity and trending, all
ordered by event time so a late event lands in its place and never overwrites
newer state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, cast

import numpy as np
import orjson
import redis.asyncio as aioredis
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

from streamrec.covis import REBASE_HALF_LIVES as COVIS_REBASE_HALF_LIVES
from streamrec.covis import CovisRule
from streamrec.events import EVENT_TYPE_OF, Event, EventType
from streamrec.features import EVENT_TYPES as POPULARITY_TYPES
from streamrec.pipelined import PipelinedConnection
from streamrec.settings import Settings

PREFIX = "sr"
EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)
# Trending scores are stored as 2^((ts - epoch) / half_life); after this many
# half-lives the epoch moves forward and every score is scaled down, so the
# doubles never overflow.
TRENDING_REBASE_HALF_LIVES = 256


def user_key(user_id: str, part: str) -> str:
    return f"{PREFIX}:u:{{{user_id}}}:{part}"


def dedup_key(user_id: str, event_id: str) -> str:
    return f"{PREFIX}:u:{{{user_id}}}:dd:{event_id}"


def recommended_key(user_id: str) -> str:
    """What the model server recommended to the user lately: item -> time (ms)."""
    return user_key(user_id, "rec")


def user_vector_key(user_id: str) -> str:
    """The user vector a model version computed, tagged with the state it came from."""
    return user_key(user_id, "vec")


def item_popularity_key(item_id: str) -> str:
    return f"{PREFIX}:i:{{{item_id}}}:pop"


def item_covis_key(item_id: str) -> str:
    """The item's co-visitation links: neighbour -> score (streamrec/covis.py); the
    scores' epoch is the `cv:epoch` field of its popularity hash (same slot)."""
    return f"{PREFIX}:i:{{{item_id}}}:cv"


def trending_key(event_type: EventType) -> str:
    return f"{PREFIX}:trend:{event_type.value}"


TRENDING_EPOCH_KEY = f"{PREFIX}:trend:epoch"
# Events applied since the last retraining cycle was triggered (all workers).
NEW_EVENTS_KEY = f"{PREFIX}:retrain:new_events"
# Which items' popularity changed, and when: a counter bumped once per script call
# that changed any, and a sorted set of items scored by its value at their newest
# change. A model server holding every item's popularity reads only what changed.
POPULARITY_SEQ_KEY = f"{PREFIX}:pop:seq"
POPULARITY_CHANGED_KEY = f"{PREFIX}:pop:changed"
# Items kept in the change log; a reader further behind than this re-reads them all.
POPULARITY_CHANGED_MAX = 100_000


# One script call applies a whole batch, passed as one JSON argument, so Python
# packs one small command per 100 events (per-event keys and arguments cost the
# worker a quarter of its time in redis-py's command packing). The script builds
# each event's keys from the same templates as the functions above.
# KEYS: 1 trending epoch, 2..(1+T) trending per type (one per EVENT_TYPES), then
#   the count of events applied since the last retraining trigger, the popularity
#   change counter and the popularity change log.
# ARGV: 1 the limits as one JSON object (`StateStore._apply_config`), 2 JSON
#   [[event_id, user_id, item_id, type, ts_ms, content fingerprint], ...].
# Returns per event: 0 duplicate, 1 applied, 2 applied and a click on an item
# recommended to that user within the hit window (the online hit rate), 3 a
# duplicate id whose content differs from the event applied under it (not applied).
# Keys other than the global ones are not declared, so this needs a single Redis
# (primary + replicas); see docs/state.md.
_APPLY_BATCH_LUA = """
local c = cjson.decode(ARGV[1])
local recent_max, purchased_max, items_max = c.recent_max, c.purchased_max, c.user_items_max
local user_ttl, item_ttl, dedup_ttl = c.user_ttl_s, c.item_ttl_s, c.dedup_ttl_s
local half_life, trending_max, rebase = c.half_life_ms, c.trending_max, c.rebase_half_lives
local hit_window, changed_max = c.hit_window_ms, c.changed_max
local covis_window, covis_max = c.covis_window, c.covis_max
local covis_half_life, covis_backward = c.covis_half_life_ms, c.covis_backward
local covis_rebase = c.covis_rebase_half_lives
local category_max = c.category_max
local types = {EVENT_TYPES}
local k_new_events, k_pop_seq, k_pop_changed = KEYS[2 + #types], KEYS[3 + #types], KEYS[4 + #types]
local changed_items = {}
local epoch = tonumber(redis.call('GET', KEYS[1]) or '')
-- The latest time the decayed counters take from an event: Redis's clock plus the
-- allowed skew, so no single event dated far ahead moves their time origin.
local clock = redis.call('TIME')
local latest_ts = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  + c.max_future_skew_ms

local trend_key = {}
for i, t in ipairs(types) do trend_key[t] = KEYS[1 + i] end

-- A member's score in a decayed sorted set is w * 2^((ts - epoch) / half-life)
-- against the set's own epoch (field `epoch_field` of hash `k_epoch`); the epoch moves
-- forward (and the scores are scaled down) once the exponent passes `rebase_at`.
-- The set keeps its `max_members` strongest members.
local function decayed_add(k_set, k_epoch, epoch_field, member, weight, ts, hl, rebase_at,
                           max_members, ttl)
  local epoch = tonumber(redis.call('HGET', k_epoch, epoch_field) or '')
  if not epoch or redis.call('EXISTS', k_set) == 0 then
    epoch = ts
    redis.call('HSET', k_epoch, epoch_field, epoch)
  end
  local exponent = (ts - epoch) / hl
  if exponent > rebase_at then
    local shift = math.floor(exponent / rebase_at) * rebase_at
    local scale = math.pow(2, -shift)
    local members = redis.call('ZRANGE', k_set, 0, -1, 'WITHSCORES')
    for i = 1, #members, 2 do
      redis.call('ZADD', k_set, tonumber(members[i + 1]) * scale, members[i])
    end
    epoch = epoch + math.floor(shift * hl)
    redis.call('HSET', k_epoch, epoch_field, epoch)
    exponent = exponent - shift
  end
  redis.call('ZINCRBY', k_set, string.format('%.17g', weight * math.pow(2, exponent)), member)
  if redis.call('ZCARD', k_set) > max_members then
    redis.call('ZREMRANGEBYRANK', k_set, 0, -max_members - 1)
  end
  redis.call('EXPIRE', k_set, ttl)
  redis.call('EXPIRE', k_epoch, ttl)
end

-- Co-visitation (streamrec/covis.py has the rule and its Python twin): each item's
-- links are a decayed set against the item's own epoch, kept in that item's
-- popularity hash; each item keeps its `covis_max` strongest links.
local function covis_add(item, neighbour, weight, ts)
  local k_links, k_pop = '{PREFIX}:i:{' .. item .. '}:cv', '{PREFIX}:i:{' .. item .. '}:pop'
  decayed_add(k_links, k_pop, 'cv:epoch', neighbour, weight, ts, covis_half_life, covis_rebase,
              covis_max, item_ttl)
end

-- Popularity within each category the catalogue gives the item (retrain.popularity.
-- CategoryPopularity is the twin): every event counts once, decayed as popularity.
local function category_add(item, ts)
  local categories = redis.call('HGET', '{PREFIX}:i:{' .. item .. '}:info', 'category')
  if not categories then return end
  for _, category in ipairs(cjson.decode(categories)) do
    local k = '{PREFIX}:c:{' .. category .. '}:'
    decayed_add(k .. 'pop', k .. 'meta', 'epoch', item, 1, ts, half_life, rebase,
                category_max, item_ttl)
  end
end

local function covisit(k_items, item, ts)
  local earlier = redis.call('ZREVRANGEBYSCORE', k_items, ts, '-inf', 'LIMIT', 0, covis_window + 1)
  local d = 0
  for _, other in ipairs(earlier) do
    if other ~= item and d < covis_window then
      d = d + 1
      covis_add(other, item, 1 / d, ts)
      if covis_backward > 0 then covis_add(item, other, covis_backward / d, ts) end
    end
  end
end

local function apply(event)
  local event_id, user, item, etype, ts = event[1], event[2], event[3], event[4], event[5]
  local content = event[6]
  local u = '{PREFIX}:u:{' .. user .. '}:'
  local k_recent, k_buy, k_items = u .. 'ev', u .. 'buy', u .. 'items'
  local k_cnt, k_meta = u .. 'cnt', u .. 'meta'
  local k_pop = '{PREFIX}:i:{' .. item .. '}:pop'
  -- The dedup marker holds the event's content fingerprint, so a second event under
  -- the same id with other content is told apart (a conflict) from a redelivery.
  local k_dedup = u .. 'dd:' .. event_id
  if not redis.call('SET', k_dedup, content, 'NX', 'EX', dedup_ttl) then
    local seen = redis.call('GET', k_dedup)
    -- '1': a marker written before fingerprints were kept; nothing to compare.
    if seen and seen ~= content and seen ~= '1' then return 3 end
    return 0
  end

  local hit = 0
  if etype == 'click' and hit_window > 0 then
    local at = tonumber(redis.call('ZSCORE', u .. 'rec', item) or '')
    if at and ts >= at and ts - at <= hit_window then hit = 1 end
  end

  -- Length-prefixed, so any id round-trips: <len>:<event_id><len>:<item_id><type>
  local member = #event_id .. ':' .. event_id .. #item .. ':' .. item .. etype
  redis.call('ZADD', k_recent, ts, member)
  redis.call('ZREMRANGEBYRANK', k_recent, 0, -recent_max - 1)
  redis.call('EXPIRE', k_recent, user_ttl)

  if etype == 'purchase' then
    redis.call('ZADD', k_buy, 'GT', ts, item)
    redis.call('ZREMRANGEBYRANK', k_buy, 0, -purchased_max - 1)
    redis.call('EXPIRE', k_buy, user_ttl)
  end

  if covis_max > 0 then covisit(k_items, item, ts) end
  redis.call('ZADD', k_items, 'GT', ts, item)
  redis.call('HINCRBY', k_cnt, etype .. ':' .. item, 1)
  local excess = redis.call('ZCARD', k_items) - items_max
  if excess > 0 then
    local evicted = redis.call('ZPOPMIN', k_items, excess)
    for i = 1, #evicted, 2 do
      for _, t in ipairs(types) do
        redis.call('HDEL', k_cnt, t .. ':' .. evicted[i])
      end
    end
  end
  redis.call('EXPIRE', k_items, user_ttl)
  redis.call('EXPIRE', k_cnt, user_ttl)

  redis.call('HINCRBY', k_meta, 'n:' .. etype, 1)
  local last_ts = tonumber(redis.call('HGET', k_meta, 'last_ts') or '-1')
  if ts > last_ts then redis.call('HSET', k_meta, 'last_ts', ts) end
  redis.call('EXPIRE', k_meta, user_ttl)

  -- Decayed popularity: the value is kept at a reference time (the newest event
  -- seen); an older event adds its weight decayed to that time, so the result
  -- does not depend on arrival order. Both counters take the event's time capped
  -- at `latest_ts`.
  local decay_ts = math.min(ts, latest_ts)
  local ref_field = etype .. ':ref'
  local pop = redis.call('HMGET', k_pop, etype, ref_field)
  local value, ref = tonumber(pop[1] or '0'), tonumber(pop[2] or tostring(decay_ts))
  if decay_ts >= ref then
    value = value * math.pow(2, -(decay_ts - ref) / half_life) + 1
    ref = decay_ts
  else
    value = value + math.pow(2, -(ref - decay_ts) / half_life)
  end
  redis.call('HSET', k_pop, etype, string.format('%.17g', value), ref_field, ref)
  redis.call('EXPIRE', k_pop, item_ttl)
  changed_items[item] = true

  -- Trending: scores are 2^((ts - epoch) / half-life); the epoch moves forward
  -- (and every score is scaled down) before the exponent can overflow a double.
  if not epoch then
    epoch = decay_ts
    redis.call('SET', KEYS[1], epoch)
  end
  local exponent = (decay_ts - epoch) / half_life
  if exponent > rebase then
    local shift = math.floor(exponent / rebase) * rebase
    local scale = math.pow(2, -shift)
    for t = 2, 1 + #types do
      local members = redis.call('ZRANGE', KEYS[t], 0, -1, 'WITHSCORES')
      for i = 1, #members, 2 do
        redis.call('ZADD', KEYS[t], tonumber(members[i + 1]) * scale, members[i])
      end
    end
    epoch = epoch + shift * half_life
    redis.call('SET', KEYS[1], string.format('%.17g', epoch))
    exponent = exponent - shift
  end
  local trend = trend_key[etype]
  redis.call('ZINCRBY', trend, string.format('%.17g', math.pow(2, exponent)), item)
  if redis.call('ZCARD', trend) > trending_max then
    redis.call('ZREMRANGEBYRANK', trend, 0, -trending_max - 1)
  end
  if category_max > 0 then category_add(item, decay_ts) end
  return 1 + hit
end

local applied = {}
for i, event in ipairs(cjson.decode(ARGV[2])) do
  applied[i] = apply(event)
end
local count = 0
for _, a in ipairs(applied) do if a == 1 or a == 2 then count = count + 1 end end
if count > 0 then
  redis.call('INCRBY', k_new_events, count)
  local seq = redis.call('INCR', k_pop_seq)
  for item in pairs(changed_items) do redis.call('ZADD', k_pop_changed, seq, item) end
  redis.call('ZREMRANGEBYRANK', k_pop_changed, 0, -changed_max - 1)
end
return applied
"""
_APPLY_BATCH_LUA = _APPLY_BATCH_LUA.replace(
    "{EVENT_TYPES}", "{" + ", ".join(f"'{t.value}'" for t in EVENT_TYPES) + "}"
).replace("{PREFIX}", PREFIX)
# Bounds one script call: Redis runs a script to the end before serving anyone else.
SCRIPT_MAX_EVENTS = 100


# After answers, many at once. ARGV: hit window ms (0: record no items), max items,
# vector ttl s, then per answer: user id, now ms, the cached vector ('' for none),
# the item count, the item ids. A user's recommended items older than the window
# and beyond the cap are dropped. Builds the user keys itself, like the apply script.
_REMEMBER_ANSWERS_LUA = """
local window, max_items, vector_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local i = 4
while i <= #ARGV do
  local u = '{PREFIX}:u:{' .. ARGV[i] .. '}:'
  local now, vector, n = tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  if vector ~= '' then redis.call('SET', u .. 'vec', vector, 'EX', vector_ttl) end
  if window > 0 and n > 0 then
    local k_rec = u .. 'rec'
    for j = i + 4, i + 3 + n do redis.call('ZADD', k_rec, now, ARGV[j]) end
    redis.call('ZREMRANGEBYSCORE', k_rec, '-inf', '(' .. (now - window))
    redis.call('ZREMRANGEBYRANK', k_rec, 0, -max_items - 1)
    redis.call('PEXPIRE', k_rec, window)
  end
  i = i + 4 + n
end
return 0
""".replace("{PREFIX}", PREFIX)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the model server keeps of one answer: the items shown, and the user
    vector it computed when the cache had none for this state."""

    user_id: str
    item_ids: Sequence[str]
    at_ms: int
    vector: CachedVector | None = None


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


# Read-only. KEYS: item popularity hashes; ARGV: event types. Per key and type the
# stored value and its reference time (0 when absent), as little-endian doubles:
# decoding them as one JSON array of numbers cost the server's event loop ~1 ms per
# 1,000 items (its popularity table reads the whole catalogue at start and on
# catch-up).
_READ_POPULARITY_LUA = """
local fields = {}
for i, t in ipairs(ARGV) do fields[2 * i - 1] = t; fields[2 * i] = t .. ':ref' end
local out, n = {}, 0
for _, key in ipairs(KEYS) do
  local values = redis.call('HMGET', key, unpack(fields))
  for j = 1, #fields do n = n + 1; out[n] = struct.pack('<d', tonumber(values[j]) or 0) end
end
return table.concat(out)
"""


# Read-only. KEYS: the popularity change counter and log; ARGV: 1 the counter value
# the reader has seen ('' for none), 2 the log's cap. Returns {counter, items
# changed since} or {counter, nil} when the log cannot tell: the counter went
# back (Redis lost it) or the log was trimmed past what the reader has seen.
_POPULARITY_CHANGES_LUA = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[1] == '' then return {seq, {}} end
local since = tonumber(ARGV[1])
if seq < since then return {seq, false} end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if tonumber(oldest[2]) > since then return {seq, false} end
end
return {seq, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. since, '+inf')}
"""


# Read-only. KEYS: per user its recent events, purchases, item counts, meta, cached
# vector and items keys; ARGV[1]: "1" to read purchases and item counts (ranking),
# else "0"; ARGV[2]: for ranking, of how many of the user's latest distinct items
# to read the co-visitation links. Per user one array: events and scores,
# purchases, counts, meta (flat field/value lists), the vector (nil when none) and
# per linked item {item, epoch, links and scores}. One script call is one command
# for the client to pack and one reply to parse, where a MULTI/EXEC pipeline of
# five commands per user cost the model server ~1 ms of its CPU per request.
_READ_USERS_LUA = """
local ranking = ARGV[1] == '1'
local covis_items = tonumber(ARGV[2] or '0')
local out = {}
for i = 1, #KEYS, 6 do
  local purchased, counts, covis = {}, {}, {}
  if ranking then
    purchased = redis.call('ZRANGE', KEYS[i + 1], 0, -1)
    counts = redis.call('HGETALL', KEYS[i + 2])
    if covis_items > 0 then
      for _, item in ipairs(redis.call('ZRANGE', KEYS[i + 5], 0, covis_items - 1, 'REV')) do
        local k_item = '{PREFIX}:i:{' .. item .. '}:'
        covis[#covis + 1] = {
          item, redis.call('HGET', k_item .. 'pop', 'cv:epoch') or '0',
          redis.call('ZRANGE', k_item .. 'cv', 0, -1, 'REV', 'WITHSCORES'),
        }
      end
    end
  end
  out[#out + 1] = {
    redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES'), purchased, counts,
    redis.call('HGETALL', KEYS[i + 3]), redis.call('GET', KEYS[i + 4]), covis,
  }
end
return out
""".replace("{PREFIX}", PREFIX)


@dataclass(frozen=True, slots=True)
class RecentEvent:
    event_id: str
    item_id: str
    type: EventType
    ts_ms: int


@dataclass(frozen=True, slots=True)
class CachedVector:
    """A user vector (float32 bytes) that `model_version` computed from the user's
    state as it was at `state_tag` (`UserState.state_tag`)."""

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


@dataclass(frozen=True, slots=True)
class UserState:
    user_id: str
    recent_events: tuple[RecentEvent, ...]
    purchased: frozenset[str]
    counts_by_type: dict[str, int]
    item_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    last_ts_ms: int | None = None
    cached_vector: CachedVector | None = None
    # The co-visitation links of the user's latest distinct items, latest first:
    # (item, stored scores, epoch ms), as `covis.covis_scores` takes them.
    covis: tuple[tuple[str, dict[str, float], int], ...] = ()

    @property
    def state_tag(self) -> str:
        """Changes with every applied event (late ones included): a vector computed
        from a state with another tag is stale."""
        return f"{sum(self.counts_by_type.values())}:{self.last_ts_ms}"

    def to_json_dict(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "recent_events": [
                {"event_id": e.event_id, "item_id": e.item_id, "type": e.type.value, "ts": e.ts_ms}
                for e in self.recent_events
            ],
            "purchased": sorted(self.purchased),
            "counts_by_type": self.counts_by_type,
            "item_counts": self.item_counts,
            "last_ts": self.last_ts_ms,
        }


def parse_recent_member(member: bytes) -> tuple[str, str, str]:
    """(event_id, item_id, type) from `<len>:<event_id><len>:<item_id><type>` (byte lengths)."""
    fields = []
    rest = member
    for _ in range(2):
        length_text, _, rest = rest.partition(b":")
        length = int(length_text)
        fields.append(rest[:length].decode())
        rest = rest[length:]
    return fields[0], fields[1], rest.decode()


def decay_popularity(stored: np.ndarray, now_ms: int, half_life_s: float) -> np.ndarray:
    """`StateStore.read_stored_popularity` rows brought forward to `now_ms`."""
    # A reader whose clock is behind the newest event sees it undecayed.
    age_ms = np.maximum(0.0, now_ms - stored[..., 1])
    decayed: np.ndarray = stored[..., 0] * np.exp2(-age_ms / (half_life_s * 1000))
    return decayed


def _pairs(flat: list[bytes]) -> list[tuple[bytes, bytes]]:
    """[field, value, field, value, ...] as (field, value) pairs."""
    return list(zip(flat[::2], flat[1::2], strict=True))


def _user_state(
    user_id: str,
    recent_raw: list[tuple[bytes, bytes]],
    purchased_raw: list[bytes],
    counts_raw: list[tuple[bytes, bytes]],
    meta_raw: list[tuple[bytes, bytes]],
    vector_raw: bytes | None,
    covis_raw: list[list[Any]],
) -> UserState:
    recent = []
    for member, score in recent_raw:
        event_id, item_id, type_value = parse_recent_member(member)
        recent.append(RecentEvent(event_id, item_id, EVENT_TYPE_OF[type_value], int(float(score))))
    item_counts: dict[str, dict[str, int]] = {}
    for field_name, count in counts_raw:
        type_value, _, item_id = field_name.decode().partition(":")
        item_counts.setdefault(item_id, {})[type_value] = int(count)
    meta = {k.decode(): v.decode() for k, v in meta_raw}
    return UserState(
        user_id=user_id,
        recent_events=tuple(recent),
        purchased=frozenset(p.decode() for p in purchased_raw),
        counts_by_type={k[2:]: int(v) for k, v in meta.items() if k.startswith("n:")},
        item_counts=item_counts,
        last_ts_ms=int(meta["last_ts"]) if "last_ts" in meta else None,
        cached_vector=CachedVector.from_bytes(vector_raw) if vector_raw else None,
        covis=tuple(
            (
                item.decode(),
                {member.decode(): float(score) for member, score in _pairs(links)},
                int(float(epoch)),
            )
            for item, epoch, links in covis_raw
        ),
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
        }
    )


def redis_client(settings: Settings) -> aioredis.Redis:
    """A client of `redis_url` whose every call has a reply and connect timeout."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
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
        client: aioredis.Redis | None = None,
        reads: PipelinedConnection | None = None,
    ) -> None:
        self.settings = settings
        self.redis: aioredis.Redis = client or redis_client(settings)
        self.reads = reads
        self._apply_script = self.redis.register_script(_APPLY_BATCH_LUA)
        self._remember_script = self.redis.register_script(_REMEMBER_ANSWERS_LUA)
        self._read_popularity_script = self.redis.register_script(_READ_POPULARITY_LUA)
        self._read_users_script: Callable[..., Awaitable[Any]] = (
            reads.script(_READ_USERS_LUA)
            if reads is not None
            else self.redis.register_script(_READ_USERS_LUA)
        )
        self._popularity_changes_script = self.redis.register_script(_POPULARITY_CHANGES_LUA)
        self._trend_keys = [trending_key(t) for t in EVENT_TYPES]
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
        call again for exactly the events not applied. Unreachable Redis raises."""
        if not events:
            return []
        keys = [
            TRENDING_EPOCH_KEY,
            *self._trend_keys,
            NEW_EVENTS_KEY,
            POPULARITY_SEQ_KEY,
            POPULARITY_CHANGED_KEY,
        ]
        config = _apply_config(self.settings)
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
            chunks = await pipe.execute(raise_on_error=False)
        outcomes: list[Applied | RedisError] = []
        for start, chunk in zip(range(0, len(events), SCRIPT_MAX_EVENTS), chunks, strict=True):
            if isinstance(chunk, RedisError):
                outcomes += [chunk] * len(events[start : start + SCRIPT_MAX_EVENTS])
            else:
                outcomes += [Applied(applied) for applied in chunk]
        return outcomes

    async def remember_answers(self, answers: Sequence[Answer]) -> None:
        """After answering, in one script call for many answers: what each user was
        shown (for the online hit rate) and the user vectors computed."""
        window_ms = self.settings.hit_window_s * 1000
        args: list[str | int | bytes] = [
            window_ms,
            self.settings.recommended_max,
            self.settings.user_ttl_s,
        ]
        for answer in answers:
            items = answer.item_ids if window_ms > 0 else ()
            if not items and answer.vector is None:
                continue
            vector = answer.vector.to_bytes() if answer.vector is not None else b""
            args += [answer.user_id, answer.at_ms, vector, len(items), *items]
        if len(args) > 3:
            await self._remember_script(args=args)

    async def record_recommended(self, user_id: str, item_ids: Sequence[str], now_ms: int) -> None:
        """Remember what the user was shown, for the online hit rate."""
        await self.remember_answers([Answer(user_id, item_ids, now_ms)])

    async def acquire_publish_slots(self, user_ids: Sequence[str], interval_ms: int) -> list[bool]:
        """Per-user rate limit shared by every publisher replica: True where this
        caller may publish now (no one did in the last `interval_ms`)."""
        return [wait_ms == 0 for wait_ms in await self.publish_slots(user_ids, interval_ms)]

    async def publish_slots(self, user_ids: Sequence[str], interval_ms: int) -> list[int]:
        """`acquire_publish_slots` that says, where the caller may not publish yet, in
        how many milliseconds it may (0: now, and the slot is taken)."""
        if interval_ms <= 0:
            return [0] * len(user_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.set(user_key(user_id, "pub"), b"1", nx=True, px=interval_ms)
                pipe.pttl(user_key(user_id, "pub"))
            replies = await pipe.execute()
        return [
            0 if granted else max(1, int(ttl_ms))
            for granted, ttl_ms in zip(replies[::2], replies[1::2], strict=True)
        ]

    async def take_new_event_count(self) -> int:
        """Events applied since the last call (by every worker), and start again at 0."""
        taken = await self.redis.getdel(NEW_EVENTS_KEY)
        return int(taken or 0)

    async def new_event_count(self) -> int:
        return int(await self.redis.get(NEW_EVENTS_KEY) or 0)

    async def read_user(self, user_id: str) -> UserState:
        """The user's whole state, and the cached user vector, in one round trip. One
        script call, so the state tag and the events it stands for are one snapshot."""
        (user,) = await self.read_users([user_id])
        return user

    async def read_users(
        self, user_ids: Sequence[str], *, for_ranking: bool = True
    ) -> list[UserState]:
        """`read_user` for many users in one script call: one round trip. With
        `for_ranking=False` only what the user encoder and the cache tag need (recent
        events, counts, last_ts, cached vector): purchases and user-item counts come
        back empty, for the stream worker's vector refresh."""
        keys = [
            key
            for user_id in user_ids
            for key in (
                user_key(user_id, "ev"),
                user_key(user_id, "buy"),
                user_key(user_id, "cnt"),
                user_key(user_id, "meta"),
                user_vector_key(user_id),
                user_key(user_id, "items"),
            )
        ]
        covis_items = self.settings.covis_read_items if for_ranking else 0
        replies = await self._read_users_script(
            keys=keys, args=["1" if for_ranking else "0", covis_items]
        )
        users = []
        for user_id, (recent, purchased, counts, meta, vector, covis) in zip(
            user_ids, replies, strict=True
        ):
            users.append(
                _user_state(
                    user_id,
                    _pairs(recent),
                    purchased,
                    _pairs(counts),
                    _pairs(meta),
                    vector,
                    covis,
                )
            )
        return users

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
        """Popularity as stored, (items, `features.EVENT_TYPES`, 2): per type the value
        at its reference time and that time (ms); zeros where none. One script call
        returns every value packed as doubles: one HGETALL per candidate spent ~45% of
        the model server's CPU in redis-py's reply parser."""
        shape = (len(item_ids), len(POPULARITY_TYPES), 2)
        if not item_ids:
            return np.zeros(shape)
        encoded = await self._read_popularity_script(
            keys=[item_popularity_key(i) for i in item_ids], args=self._popularity_types
        )
        return np.frombuffer(encoded, dtype="<f8").reshape(shape).astype(np.float64)

    async def popularity_changes(self, since: int | None) -> tuple[int, list[str] | None]:
        """(the change counter, the items whose popularity changed after the counter
        was `since`); None for the items when the log cannot tell (read them all).
        With `since=None` only the counter: where a full read starts from."""
        seq, changed = await self._popularity_changes_script(
            keys=[POPULARITY_SEQ_KEY, POPULARITY_CHANGED_KEY],
            args=["" if since is None else since, POPULARITY_CHANGED_MAX],
        )
        return int(seq), None if changed is None else [item.decode() for item in changed]

    async def trending(self, event_type: EventType, k: int) -> list[tuple[str, float]]:
        """The top-k items by decayed count of one event type (relative scores)."""
        rows = cast(
            list[tuple[bytes, float]],
            await self.redis.zrevrange(trending_key(event_type), 0, k - 1, withscores=True),
        )
        return [(member.decode(), float(score)) for member, score in rows]
