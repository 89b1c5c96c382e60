"""The Redis key layout, defined once: the Python key functions below and the Lua
scripts' key functions (`LUA_PRELUDE`, put before every script of `streamrec/lua/`)
are both made from this table. docs/state.md gives each key's memory.

A user's keys share the hash tag `{user_id}`, an item's `{item_id}`, a category's
`{category}`; every key is capped or expires. The global keys the event apply writes
(trending, its epoch, the retrain counter, the popularity change log) have one
layout per deployment (`GlobalKeys`): on a Redis Cluster they share the hash tag
`{g}`, so one script call per batch updates them; the catalogue-wide keys
(`CatalogueKeys`) likewise share `{catalogue}` there.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable

from streamrec.events import EventType

PREFIX = "sr"
EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)


class UserPart(StrEnum):
    """`sr:u:{user_id}:<part>`."""

    RECENT = "ev"  # sorted set: the latest events, by event time
    PURCHASED = "buy"  # sorted set: items bought, by time
    ITEMS = "items"  # sorted set: items touched, by their latest time
    COUNTS = "cnt"  # hash: `<type>:<item>` -> count
    META = "meta"  # hash: counts by type, the latest event time
    RECOMMENDED = "rec"  # sorted set: items recommended lately, by time (hit rate)
    ARM = "arm"  # string: the experiment run and arm of those answers (streamrec/experiments.py)
    ARM_COUNTS = "armc"  # hash: the user's clicks and hits in that arm (hit_rates.py)
    VECTOR = "vec"  # the user vector a model version computed
    FEED = "pub"  # the feed's per-user interval marker ("pub": existing keys stay valid)
    # Redis Cluster only: hash, event id -> what is left to apply of that event in
    # other slots (streamrec/cluster_apply.py); empty once a batch has gone through.
    PENDING = "pend"
    DEDUP = "dd:"  # + event_id: an event's dedup marker


USER_PARTS = frozenset(p.value for p in UserPart if p is not UserPart.DEDUP)


class ItemPart(StrEnum):
    """`sr:i:{item_id}:<part>`."""

    POPULARITY = "pop"  # hash: decayed counts by type, their reference times, epochs
    COVIS = "cv"  # sorted set: co-visitation links (streamrec/covis.py)
    INFO = "info"  # hash: the catalogue record, or its deletion marker
    # Redis Cluster only: hash, `<ts>:<fingerprint>` -> what is left to apply of that
    # record in other slots (streamrec/cluster_catalogue.py); empty between batches.
    RECORD_PENDING = "ipend"
    # Redis Cluster only: + `<len>:<user_id><event_id>`, that event's share of this
    # item (popularity, co-visitation links) was added (streamrec/cluster_apply.py).
    DEDUP = "dd:"


class CategoryPart(StrEnum):
    """`sr:c:{category}:<part>`."""

    POPULAR = "pop"  # sorted set: items by decayed event count
    META = "meta"  # hash: that set's epoch
    AVAILABLE = "avail"  # sorted set: available items, by record time


def user_key(user_id: str, part: UserPart) -> str:
    return f"{PREFIX}:u:{{{user_id}}}:{part}"


def item_key(item_id: str, part: ItemPart) -> str:
    return f"{PREFIX}:i:{{{item_id}}}:{part}"


def category_key(category: str, part: CategoryPart) -> str:
    return f"{PREFIX}:c:{{{category}}}:{part}"


ALL_USER_KEYS = f"{PREFIX}:u:*"  # a SCAN pattern


def user_keys_pattern(user_id: str) -> str:
    """A SCAN pattern matching every key of the user and no other user's: the id's
    glob characters are escaped."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in user_id)
    return f"{PREFIX}:u:{{{escaped}}}:*"


def is_user_key(key: str, user_id: str) -> bool:
    """Whether a key `user_keys_pattern` matched is this user's: one of its parts, or
    a dedup marker (whose event id may hold anything)."""
    prefix = user_key(user_id, UserPart.RECENT)[: -len(UserPart.RECENT)]
    part = key[len(prefix) :]
    return key.startswith(prefix) and (part in USER_PARTS or part.startswith(UserPart.DEDUP.value))


def user_key_owner(key: str, user_ids: Collection[str]) -> str | None:
    """Which of these users a key is of (`is_user_key`), if any."""
    start = len(f"{PREFIX}:u:{{")
    end = key.find("}:", start)
    while end != -1:
        candidate = key[start:end]
        if candidate in user_ids and is_user_key(key, candidate):
            return candidate
        end = key.find("}:", end + 1)
    return None


def dedup_key(user_id: str, event_id: str) -> str:
    return user_key(user_id, UserPart.DEDUP) + event_id


def recommended_key(user_id: str) -> str:
    """What the model server recommended to the user lately: item -> time (ms)."""
    return user_key(user_id, UserPart.RECOMMENDED)


def user_vector_key(user_id: str) -> str:
    """The user vector a model version computed, tagged with the state it came from."""
    return user_key(user_id, UserPart.VECTOR)


def user_arm_key(user_id: str) -> str:
    """`<run id>|<arm>` of the experiment answers the user was shown lately."""
    return user_key(user_id, UserPart.ARM)


def user_arm_counts_key(user_id: str) -> str:
    """The user's own clicks and hits in their experiment arm (`arm`: `<run id>|<arm>`,
    `clicks`, `hits`): what the arm's per-user sums are moved by."""
    return user_key(user_id, UserPart.ARM_COUNTS)


def experiment_key(run_id: str) -> str:
    """One experiment run's counters: `<arm>:<answers|clicks|hits|purchases>` -> count,
    and the per-user sums `<arm>:<users|clicks_sq|hits_sq|clicks_hits>`."""
    return f"{PREFIX}:x:{{{run_id}}}"


def item_popularity_key(item_id: str) -> str:
    return item_key(item_id, ItemPart.POPULARITY)


def item_covis_key(item_id: str) -> str:
    """The item's co-visitation links: neighbour -> score (streamrec/covis.py); the
    scores' epoch is the `cv:epoch` field of its popularity hash (same slot)."""
    return item_key(item_id, ItemPart.COVIS)


def item_info_key(item_id: str) -> str:
    """The item's catalogue record (a hash), or the marker of its deletion."""
    return item_key(item_id, ItemPart.INFO)


def category_available_key(category: str) -> str:
    """The category's available items: item -> ts of the record that made it so."""
    return category_key(category, CategoryPart.AVAILABLE)


def category_popular_key(category: str) -> str:
    """The category's items by decayed event count (the stream worker's apply script)."""
    return category_key(category, CategoryPart.POPULAR)


def event_marker(user_id: str, event_id: str) -> str:
    """One event's name in the cluster path's per-slot markers: the user's id with its
    length first, so no two (user, event) pairs share a name."""
    return f"{len(user_id)}:{user_id}{event_id}"


def item_event_key(item_id: str, user_id: str, event_id: str) -> str:
    """Redis Cluster: the marker that this event's share of the item was added."""
    return item_key(item_id, ItemPart.DEDUP) + event_marker(user_id, event_id)


def experiment_event_key(run_id: str, user_id: str, event_id: str) -> str:
    """Redis Cluster: the marker that this event was counted in the run's counters."""
    return f"{experiment_key(run_id)}:dd:{event_marker(user_id, event_id)}"


@dataclass(frozen=True, slots=True)
class GlobalKeys:
    """The keys every batch of events writes, whoever its users and items."""

    # Per type a sorted set: item -> decayed count, scores against the epoch.
    trending: dict[EventType, str]
    trending_epoch: str
    # Events applied since the last retraining cycle was triggered (all workers).
    new_events: str
    # Which items' popularity changed, and when: a counter bumped once per script call
    # that changed any, and a sorted set of items scored by its value at their newest
    # change. A model server holding every item's popularity reads only what changed.
    popularity_seq: str
    popularity_changed: str

    @classmethod
    def under(cls, prefix: str) -> GlobalKeys:
        return cls(
            trending={t: f"{prefix}:trend:{t.value}" for t in EVENT_TYPES},
            trending_epoch=f"{prefix}:trend:epoch",
            new_events=f"{prefix}:retrain:new_events",
            popularity_seq=f"{prefix}:pop:seq",
            popularity_changed=f"{prefix}:pop:changed",
        )


# A single Redis keeps the names it always had; a cluster puts them in one slot.
STANDALONE_KEYS = GlobalKeys.under(PREFIX)
CLUSTER_KEYS = GlobalKeys.under(f"{PREFIX}:{{g}}")


def global_keys(cluster: bool) -> GlobalKeys:
    return CLUSTER_KEYS if cluster else STANDALONE_KEYS


def trending_key(event_type: EventType) -> str:
    """A single Redis's trending set of this type (`GlobalKeys` for a cluster's)."""
    return STANDALONE_KEYS.trending[event_type]


TRENDING_EPOCH_KEY = STANDALONE_KEYS.trending_epoch
NEW_EVENTS_KEY = STANDALONE_KEYS.new_events
POPULARITY_SEQ_KEY = STANDALONE_KEYS.popularity_seq
POPULARITY_CHANGED_KEY = STANDALONE_KEYS.popularity_changed


@dataclass(frozen=True, slots=True)
class CatalogueKeys:
    """The catalogue-wide keys the items script keeps beside each item's record."""

    # Set by the first item record ever applied: until then serving skips its
    # catalogue read.
    marker: str
    # Items with a live record, and those of them unavailable: counters kept with
    # every record applied (the worker's catalogue gauges read them).
    items: str
    unavailable: str
    # Which items' records changed, and in what order: a counter bumped per applied
    # record, and a sorted set of the items scored by its value at their newest
    # record (a deleted item's for as long as its deletion marker lives: the
    # deletions, scored by the delete's event time, say which entries go when).
    # Model servers follow it to mirror the catalogue (model_server/catalogue_mirror.py)
    # and to give items their model has no vector for one from their content
    # (model_server/live_items.py).
    seq: str
    changes: str
    deletions: str

    @classmethod
    def under(cls, prefix: str) -> CatalogueKeys:
        return cls(
            marker=prefix,
            items=f"{prefix}:items",
            unavailable=f"{prefix}:unavailable",
            seq=f"{prefix}:seq",
            changes=f"{prefix}:changes",
            deletions=f"{prefix}:deletions",
        )

    def record_marker(self, item_id: str, ts_ms: int, fingerprint: str) -> str:
        """Redis Cluster: the marker that this record was counted and logged."""
        return f"{self.marker}:dd:{len(item_id)}:{item_id}{ts_ms}:{fingerprint}"


# A single Redis keeps the names it always had; a cluster puts them in one slot.
STANDALONE_CATALOGUE_KEYS = CatalogueKeys.under(f"{PREFIX}:catalogue")
CLUSTER_CATALOGUE_KEYS = CatalogueKeys.under(f"{PREFIX}:{{catalogue}}")


def catalogue_keys(cluster: bool) -> CatalogueKeys:
    return CLUSTER_CATALOGUE_KEYS if cluster else STANDALONE_CATALOGUE_KEYS


CATALOGUE_MARKER = STANDALONE_CATALOGUE_KEYS.marker
CATALOGUE_ITEMS_KEY = STANDALONE_CATALOGUE_KEYS.items
CATALOGUE_UNAVAILABLE_KEY = STANDALONE_CATALOGUE_KEYS.unavailable
CATALOGUE_SEQ_KEY = STANDALONE_CATALOGUE_KEYS.seq
CATALOGUE_CHANGES_KEY = STANDALONE_CATALOGUE_KEYS.changes
CATALOGUE_DELETIONS_KEY = STANDALONE_CATALOGUE_KEYS.deletions


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _lua_constants(prefix: str, parts: type[StrEnum]) -> list[str]:
    return [f"local {prefix}_{part.name} = {_lua_string(part.value)}" for part in parts]


LUA_PRELUDE = "\n".join(
    [
        "-- Made from streamrec/keys.py: the one definition of the key layout.",
        *(
            f"local function {name}_key({name}, part) return "
            + _lua_string(f"{PREFIX}:{letter}:{{")
            + f" .. {name} .. '}}:' .. part end"
            for name, letter in (("user", "u"), ("item", "i"), ("category", "c"))
        ),
        "local function experiment_key(run) return "
        + _lua_string(f"{PREFIX}:x:{{")
        + " .. run .. '}' end",
        *_lua_constants("USER", UserPart),
        *_lua_constants("ITEM", ItemPart),
        *_lua_constants("CATEGORY", CategoryPart),
        f"local CATALOGUE_MARKER = {_lua_string(CATALOGUE_MARKER)}",
        f"local CATALOGUE_ITEMS = {_lua_string(CATALOGUE_ITEMS_KEY)}",
        f"local CATALOGUE_UNAVAILABLE = {_lua_string(CATALOGUE_UNAVAILABLE_KEY)}",
        f"local CATALOGUE_SEQ = {_lua_string(CATALOGUE_SEQ_KEY)}",
        f"local CATALOGUE_CHANGES = {_lua_string(CATALOGUE_CHANGES_KEY)}",
        f"local CATALOGUE_DELETIONS = {_lua_string(CATALOGUE_DELETIONS_KEY)}",
        "local EVENT_TYPES = {" + ", ".join(_lua_string(t.value) for t in EVENT_TYPES) + "}",
        "",
    ]
)


@cache
def lua_script(name: str, cross_slot: bool = False) -> str:
    """`streamrec/lua/<name>.lua` with the key layout and the functions the scripts
    share (`lua/shared.lua`) before it. `cross_slot`: flagged to touch keys of several
    slots of one Redis Cluster node (Redis 7's `allow-cross-slot-keys`): a cluster
    step sends one call per node, not one per slot."""
    lua = resources.files("streamrec").joinpath("lua")
    flags = "#!lua flags=allow-cross-slot-keys\n" if cross_slot else ""
    return flags + LUA_PRELUDE + "\n" + _lua_text(lua, "shared") + "\n" + _lua_text(lua, name)


def _lua_text(folder: Traversable, name: str) -> str:
    return folder.joinpath(f"{name}.lua").read_text("utf-8")
