"""The catalogue in Redis: every key an item record writes, the script that writes
them, and the reads serving asks of them.

An item's record is one hash in the item's hash slot (`{item_id}`, as its
popularity keys); each category has a sorted set of its available items. One Lua
script applies a batch of records, comparing event times inside Redis, so an
older record never overwrites a newer one (docs/catalogue.md, docs/state.md); on a
Redis Cluster the same is done in steps by slot (`streamrec/cluster_catalogue.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from streamrec.cluster_catalogue import ClusterCatalogueApply
from streamrec.content import ItemContent
from streamrec.items import AttributeValue, ItemChange, ItemDelete
from streamrec.keys import (
    catalogue_keys,
    category_available_key,
    category_popular_key,
    item_info_key,
    lua_script,
)
from streamrec.settings import Settings
from streamrec.state import SCRIPT_MAX_EVENTS, RedisClient, redis_client

# What the fingerprint of a delete is: any record's is 16 hex digits.
DELETED_FINGERPRINT = "-"


def record_fingerprint(change: ItemChange) -> str:
    """What tells a redelivered record (same ts, same fingerprint: a duplicate) from
    another record with the same ts (applied: the later one in the partition wins)."""
    if isinstance(change, ItemDelete):
        return DELETED_FINGERPRINT
    attributes = sorted(change.attributes.items()) if change.attributes else None
    content = orjson.dumps(
        [
            change.available,
            change.categories,
            change.title,
            change.price,
            change.tags,
            attributes,
        ]
    )
    return hashlib.blake2b(content, digest_size=8).hexdigest()


class ItemApplied(IntEnum):
    """What applying one item record did."""

    DUPLICATE = 0  # the same ts and content as what is stored: a redelivery
    APPLIED = 1
    DELETED = 2  # the item's keys removed, its deletion marker written
    STALE = 3  # older than what is stored: not applied


def _script_args(change: ItemChange) -> list[Any]:
    fingerprint = record_fingerprint(change)
    if isinstance(change, ItemDelete):
        return [change.item_id, change.ts_ms, fingerprint, 1, 0, [], []]
    fields: list[str] = []
    if change.categories:
        fields += ["category", orjson.dumps(change.categories).decode()]
    if change.title is not None:
        fields += ["title", change.title]
    if change.price is not None:
        fields += ["price", repr(change.price)]
    if change.tags:
        fields += ["tags", orjson.dumps(change.tags).decode()]
    if change.attributes:
        fields += ["attributes", orjson.dumps(change.attributes).decode()]
    available = 1 if change.available else 0
    return [change.item_id, change.ts_ms, fingerprint, 0, available, change.categories, fields]


@dataclass(frozen=True, slots=True)
class CatalogueItem:
    """An item as the catalogue holds it; `deleted` for the marker of a deletion."""

    item_id: str
    ts_ms: int
    available: bool
    categories: tuple[str, ...] = ()
    title: str | None = None
    price: float | None = None
    tags: tuple[str, ...] = ()
    attributes: dict[str, AttributeValue] | None = None
    deleted: bool = False

    @property
    def content(self) -> ItemContent:
        return ItemContent(self.categories, self.title, self.price, self.tags)


def _catalogue_item(item_id: str, fields: dict[bytes, bytes]) -> CatalogueItem:
    def text(name: str) -> str | None:
        value = fields.get(name.encode())
        return None if value is None else value.decode()

    def decoded(name: str) -> Any:
        value = fields.get(name.encode())
        return None if value is None else orjson.loads(value)

    price = text("price")
    return CatalogueItem(
        item_id=item_id,
        ts_ms=int(fields[b"ts"]),
        available=fields.get(b"available") == b"1",
        categories=tuple(decoded("category") or ()),
        title=text("title"),
        price=None if price is None else float(price),
        tags=tuple(decoded("tags") or ()),
        attributes=decoded("attributes"),
        deleted=fields.get(b"deleted") == b"1",
    )


class Catalogue:
    """The catalogue's script and reads over one Redis client (its own, or one it is
    handed and leaves open)."""

    def __init__(self, settings: Settings, client: RedisClient | None = None) -> None:
        self.settings = settings
        self._owns_client = client is None
        self.redis: RedisClient = client or redis_client(settings)
        self.cluster: ClusterCatalogueApply | None = None
        if isinstance(self.redis, RedisCluster):
            self.cluster = ClusterCatalogueApply(self.redis, catalogue_keys(cluster=True))
        self.keys = catalogue_keys(self.cluster is not None)
        self._apply_script = self.redis.register_script(lua_script("apply_items"))
        self._read_field_script = self.redis.register_script(lua_script("read_field"))
        self._config = orjson.dumps(
            {
                "tombstone_ttl_s": settings.item_tombstone_ttl_s,
                # Redis Cluster: how long a record's pending entry and marker live.
                "pending_ttl_s": settings.dedup_ttl_s,
            }
        )

    async def close(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def apply_records_each(
        self, changes: Sequence[ItemChange]
    ) -> list[ItemApplied | RedisError]:
        """Apply records in one round trip: per record its outcome, or the error Redis
        answered for the script call that held it (`SCRIPT_MAX_EVENTS` records a
        call), so a caller can call again for exactly those. Unreachable Redis raises."""
        if not changes:
            return []
        if self.cluster is not None:
            rows = [_script_args(c) for c in changes]
            return [
                o if isinstance(o, RedisError) else ItemApplied(o)
                for o in await self.cluster.apply(rows, self._config)
            ]
        assert isinstance(self.redis, aioredis.Redis)  # not a cluster: one script per call
        calls = range(0, len(changes), SCRIPT_MAX_EVENTS)
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in calls:
                batch = [_script_args(c) for c in changes[start : start + SCRIPT_MAX_EVENTS]]
                await self._apply_script(args=[self._config, orjson.dumps(batch)], client=pipe)
            replies = await pipe.execute(raise_on_error=False)
        outcomes: list[ItemApplied | RedisError] = []
        for start, reply in zip(calls, replies, strict=True):
            if isinstance(reply, RedisError):
                outcomes += [reply] * len(changes[start : start + SCRIPT_MAX_EVENTS])
            else:
                outcomes += [ItemApplied(applied) for applied in reply]
        return outcomes

    async def available(self, item_ids: Sequence[str]) -> list[bool]:
        """Per item: False when the catalogue says unavailable or deleted, True
        otherwise. An item the catalogue does not know counts as available: the
        catalogue is optional, and a shop without one serves every item."""
        values = await self._read_field(item_ids, "available")
        return [value != b"0" for value in values]

    async def categories(self, item_ids: Sequence[str]) -> list[tuple[str, ...]]:
        """Per item its categories, in the record's order; () when none or unknown."""
        values = await self._read_field(item_ids, "category")
        return [() if value is None else tuple(orjson.loads(value)) for value in values]

    async def items_in_category(self, category: str, limit: int) -> list[str]:
        """Up to `limit` available items of the category, newest record first."""
        if limit <= 0:
            return []
        members = cast(
            list[bytes], await self.redis.zrevrange(category_available_key(category), 0, limit - 1)
        )
        return [member.decode() for member in members]

    async def changes_since(self, seq: int, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` items whose newest record (a delete too, while its marker
        lives) came after change `seq`, as (item id, its change number), oldest
        change first; from 0: every item with a record."""
        rows = cast(
            list[tuple[bytes, float]],
            await self.redis.zrangebyscore(
                self.keys.changes, f"({seq}", "+inf", start=0, num=limit, withscores=True
            ),
        )
        return [(member.decode(), int(score)) for member, score in rows]

    async def present(self) -> bool:
        """Has any record ever been applied here (`CatalogueKeys.marker`)?"""
        return bool(await self.redis.exists(self.keys.marker))

    async def counts(self) -> tuple[int, int]:
        """(items with a live record, of them unavailable), as the items script keeps
        them (records applied before these counters existed are not in them)."""
        items, unavailable = await self.redis.mget(self.keys.items, self.keys.unavailable)
        return int(items or 0), int(unavailable or 0)

    async def popular(self, categories: Sequence[str], limit: int) -> list[list[str]]:
        """Per category up to `limit` of its most popular items now (the stream
        worker's decayed counts, docs/state.md), most popular first; availability
        unchecked. One round trip."""
        if limit <= 0 or not categories:
            return [[] for _ in categories]
        async with self.redis.pipeline(transaction=False) as pipe:
            for category in categories:
                pipe.zrevrange(category_popular_key(category), 0, limit - 1)
            replies = cast(list[list[bytes]], await pipe.execute())
        return [[member.decode() for member in members] for members in replies]

    async def items(self, item_ids: Sequence[str]) -> list[CatalogueItem | None]:
        """Per item the whole record (or its deletion marker); None when unknown."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for item_id in item_ids:
                pipe.hgetall(item_info_key(item_id))
            replies = await pipe.execute()
        return [
            _catalogue_item(item_id, fields) if fields else None
            for item_id, fields in zip(item_ids, replies, strict=True)
        ]

    async def _read_field(self, item_ids: Sequence[str], field: str) -> list[bytes | None]:
        if not item_ids:
            return []
        keys = [item_info_key(item_id) for item_id in item_ids]
        if self.cluster is not None:
            # The script reads one slot: the fields one command each, a node at a time.
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, field)
                values = await pipe.execute()
        else:
            values = await self._read_field_script(keys=keys, args=[field])
        return [value or None for value in values]
