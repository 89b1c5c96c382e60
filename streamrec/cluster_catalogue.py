"""Applying a batch of item records on a Redis Cluster, where a script call may touch
the keys of one slot only: `lua/apply_items.lua` split into steps, each safe to run
again (the same rules as the event apply, `streamrec/cluster_apply.py`).

1. per item slot (`lua/cluster_record_step.lua`, one call per node for all its
   slots): each record compared with the stored one and written, as on one Redis;
   what is left to apply elsewhere is kept in the item's pending hash
   (`sr:i:{I}:ipend`);
2. per category slot: the item leaves the available sets of its old categories and
   joins those of its new ones, in the batch's order (ZREM and ZADD: the same
   commands again leave the same sets);
3. one call in the `{catalogue}` slot (`lua/cluster_catalogue_step.lua`): the counts
   and the change log the servers follow, once per record (a marker each);
4. per item slot: the pending entries go.

A batch cut short anywhere is finished by applying it again: step 1 then hands back
the pending entries of its records instead of calling them duplicates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError

from streamrec.cluster_apply import bounded_calls, grouped, node_of
from streamrec.keys import (
    CatalogueKeys,
    ItemPart,
    category_available_key,
    item_info_key,
    item_key,
    lua_script,
)


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """What step 1 left to apply of one record (its pending entry)."""

    item_id: str
    ts_ms: int
    fingerprint: str
    deleted: bool
    removed_from: tuple[str, ...]  # categories whose available set it leaves
    added_to: tuple[str, ...]  # and those it joins
    live_change: int  # of the catalogue's live-item count
    unavailable_change: int

    @classmethod
    def from_json(cls, row: Sequence[Any], raw: bytes) -> PendingRecord:
        stored = orjson.loads(raw)

        def names(value: Any) -> tuple[str, ...]:
            # cjson writes an empty table as {}.
            return tuple(value) if isinstance(value, list) else ()

        return cls(
            item_id=str(row[0]),
            ts_ms=int(stored["ts"]),
            fingerprint=str(row[2]),
            deleted=stored["deleted"] == 1,
            removed_from=names(stored["removed"]),
            added_to=names(stored["added"]),
            live_change=int(stored["live"]),
            unavailable_change=int(stored["unavailable"]),
        )

    @property
    def field(self) -> str:
        return f"{self.ts_ms}:{self.fingerprint}"


class ClusterCatalogueApply:
    """The scripts of steps 1 and 3, registered with the cluster client."""

    def __init__(self, client: RedisCluster, keys: CatalogueKeys) -> None:
        self.client = client
        self.keys = keys
        self._record = client.register_script(lua_script("cluster_record_step", cross_slot=True))
        self._catalogue = client.register_script(lua_script("cluster_catalogue_step"))

    async def apply(self, rows: Sequence[Sequence[Any]], config: bytes) -> list[int | RedisError]:
        """Per record (`apply_items.lua`'s argument rows) its `ItemApplied` value, or
        the error of the step-1 call that held it; `config`: the limits, with
        `pending_ttl_s`. Raises when a later step fails: applying again finishes it."""
        await self.client.initialize()  # the slot map the calls are grouped by
        by_node = grouped(
            range(len(rows)), lambda index: node_of(self.client, item_info_key(str(rows[index][0])))
        )
        groups = list(by_node.values())
        replies = await bounded_calls(
            [
                self._record(
                    keys=[item_info_key(str(rows[group[0]][0]))],
                    args=[config, orjson.dumps([rows[i] for i in group])],
                )
                for group in groups
            ]
        )
        results: list[int | RedisError] = [ClusterDownError("not applied") for _ in rows]
        pending: list[tuple[int, PendingRecord]] = []
        for group, reply in zip(groups, replies, strict=True):
            for n, index in enumerate(group):
                if isinstance(reply, RedisError):
                    results[index] = reply
                    continue
                outcome, raw = reply[n]
                results[index] = int(outcome)
                if raw:
                    pending.append((index, PendingRecord.from_json(rows[index], raw)))
        if pending:
            await self._finish([p for _, p in sorted(pending, key=lambda pair: pair[0])], config)
        return results

    async def _finish(self, records: list[PendingRecord], config: bytes) -> None:
        await _raising(self._categories(records))
        await _raising(
            self._catalogue(
                keys=[
                    self.keys.marker,
                    self.keys.items,
                    self.keys.unavailable,
                    self.keys.seq,
                    self.keys.changes,
                    self.keys.deletions,
                ],
                args=[
                    config,
                    orjson.dumps(
                        [
                            [
                                self.keys.record_marker(r.item_id, r.ts_ms, r.fingerprint),
                                r.item_id,
                                r.ts_ms,
                                int(r.deleted),
                                r.live_change,
                                r.unavailable_change,
                            ]
                            for r in records
                        ]
                    ),
                ],
            )
        )
        await _raising(self._clear(records))

    async def _categories(self, records: list[PendingRecord]) -> None:
        """Step 2: one command per category and record, in the batch's order (a
        cluster pipeline keeps each node's commands in order)."""
        if not any(r.removed_from or r.added_to for r in records):
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for r in records:
                for category in r.removed_from:
                    pipe.zrem(category_available_key(category), r.item_id)
                for category in r.added_to:
                    pipe.zadd(category_available_key(category), {r.item_id: r.ts_ms})
            await pipe.execute()

    async def _clear(self, records: list[PendingRecord]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for r in records:
                pipe.hdel(item_key(r.item_id, ItemPart.RECORD_PENDING), r.field)
            await pipe.execute()


async def _raising(call: Awaitable[Any]) -> Any:
    """A later step's call: a cluster without the slot's node (or a stale slot map)
    raises as Redis refusing the write, which the worker waits out and retries."""
    try:
        return await call
    except RedisClusterException as exc:
        raise ClusterDownError(str(exc)) from exc
