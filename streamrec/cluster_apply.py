"""Applying a batch of events on a Redis Cluster, where a script call may touch the
keys of one node only: the single-Redis apply (`lua/apply_events.lua`, one call)
split into steps by slot group, each step safe to run again. A step sends one call
per node for all the slots of it the batch touches (`node_of`).

1. per user slot (`lua/cluster_user_step.lua`): dedup and the user's keys, as on one
   Redis; what is left to apply elsewhere is kept in the user's pending hash;
2. per item slot: popularity and co-visitation links, once per item and event (a
   marker each: `keys.item_event_key`);
3. one call in the `{g}` slot: trending (absolute scores, ZADD GT), the retrain
   counter, the popularity change log;
4. per category slot and 5. per experiment run slot: category popularity (absolute,
   ZADD GT) and experiment counters (a marker each);
6. per user slot: the pending entries go.

A batch cut short anywhere is finished by applying it again (the worker retries it,
or Kafka redelivers it): step 1 then hands back the pending entries of its events,
and steps 2-5 add nothing twice. docs/operations.md, "Redis Cluster".
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from streamrec.events import Event
from streamrec.keys import (
    CLUSTER_KEYS,
    EVENT_TYPES,
    UserPart,
    category_popular_key,
    event_marker,
    experiment_key,
    item_popularity_key,
    lua_script,
    user_key,
)

# Script calls of one step in flight at once (each its own round trip to its node).
MAX_CALLS_IN_FLIGHT = 64


@dataclass(frozen=True, slots=True)
class Effects:
    """What step 1 left to apply of one event (its pending entry)."""

    user_id: str
    event_id: str
    item_id: str
    type: str
    ts_ms: int
    decay_ts_ms: int
    neighbours: tuple[str, ...]
    arm: str
    recommended: bool
    # A click's share of its arm's per-user sums (users, clicks_sq, hits_sq,
    # clicks_hits), worked out in the user's slot; () for any other event.
    sums: tuple[int, ...]

    @classmethod
    def from_json(cls, event: Event, raw: bytes) -> Effects:
        stored = orjson.loads(raw)
        neighbours = stored["neighbours"]
        return cls(
            user_id=event.user_id,
            event_id=event.event_id,
            item_id=stored["item"],
            type=stored["type"],
            ts_ms=int(stored["ts"]),
            decay_ts_ms=int(stored["decay_ts"]),
            # cjson writes an empty table as {}.
            neighbours=tuple(neighbours) if isinstance(neighbours, list) else (),
            arm=stored["arm"],
            recommended=stored["recommended"] == 1,
            sums=tuple(sums) if isinstance(sums := stored.get("sums"), list) else (),
        )

    @property
    def marker(self) -> str:
        return event_marker(self.user_id, self.event_id)


@dataclass
class ApplyStats:
    """Script calls made, by step: what a batch costs on a cluster (one on one Redis)."""

    calls: dict[str, int]

    def total(self) -> int:
        return sum(self.calls.values())


class ClusterApply:
    """The scripts of each step, registered with the cluster client."""

    def __init__(self, client: RedisCluster, experiment_ttl_s: int, marker_ttl_s: int) -> None:
        self.client = client
        self.experiment_ttl_s, self.marker_ttl_s = experiment_ttl_s, marker_ttl_s
        self.config = b""

        def script(name: str, cross_slot: bool = True) -> AsyncScript:
            return client.register_script(lua_script(name, cross_slot))

        self._user = script("cluster_user_step")
        self._item = script("cluster_item_step")
        self._global = script("cluster_global_step", cross_slot=False)  # one slot: {g}
        self._category = script("cluster_category_step")
        self._experiment = script("cluster_experiment_step")
        self._clear = script("cluster_clear_pending")
        self._global_keys = [
            CLUSTER_KEYS.trending_epoch,
            *(CLUSTER_KEYS.trending[t] for t in EVENT_TYPES),
            CLUSTER_KEYS.new_events,
            CLUSTER_KEYS.popularity_seq,
            CLUSTER_KEYS.popularity_changed,
        ]
        self.last = ApplyStats({})

    def _slot(self, key: str) -> str:
        return node_of(self.client, key)

    async def apply(
        self, events: Sequence[Event], fingerprints: Sequence[str], config: bytes
    ) -> list[int | RedisError]:
        """Per event its outcome (`state.Applied`'s value), or the error of the step-1
        call that held it; `config`: the apply script's limits. Raises when a later
        step fails: applying the batch again finishes it."""
        self.last = ApplyStats({})
        self.config = config
        # The slot map the calls are grouped by (a no-op once it is held; after an
        # error redis-py asks for a fresh one, which this takes).
        await self.client.initialize()
        by_user_slot = grouped(
            range(len(events)), lambda i: self._slot(user_key(events[i].user_id, UserPart.META))
        )
        groups = list(by_user_slot.values())
        replies = await self._calls(
            "user",
            [
                self._user(
                    keys=[user_key(events[group[0]].user_id, UserPart.META)],
                    args=[self.config, _rows(events, fingerprints, group)],
                )
                for group in groups
            ],
        )
        results: list[int | RedisError] = [ClusterDownError("not applied") for _ in events]
        effects: list[tuple[int, Effects]] = []
        first_time = 0
        for group, reply in zip(groups, replies, strict=True):
            for index, answer in zip(group, _answers(reply, len(group)), strict=True):
                if isinstance(answer, RedisError):
                    results[index] = answer
                    continue
                outcome, raw, earlier = answer
                results[index] = int(outcome)
                if raw:
                    effects.append((index, Effects.from_json(events[index], raw)))
                    # The retrain counter counts an event once, at its first attempt: a
                    # batch cut short before step 3 leaves it short (a trigger, not a tally).
                    first_time += int(not earlier)
        if effects:
            # In the batch's order, as on a single Redis: the first link an item gets
            # sets its links' epoch.
            await self._finish(
                [e for _, e in sorted(effects, key=lambda pair: pair[0])], first_time
            )
        return results

    async def _finish(self, effects: list[Effects], first_time: int) -> None:
        standing = await self._items_step(effects)
        await self._raise_any(
            "global",
            [
                self._global(
                    keys=self._global_keys,
                    args=[
                        self.config,
                        orjson.dumps(
                            {
                                "items": [[i, values] for i, (values, _) in standing.items()],
                                "new": first_time,
                            },
                        ),
                    ],
                )
            ],
        )
        await self._categories_step(standing)
        await self._experiments_step(effects)
        by_user_slot = grouped(effects, lambda e: self._slot(user_key(e.user_id, UserPart.META)))
        await self._raise_any(
            "clear",
            [
                self._clear(
                    keys=[user_key(group[0].user_id, UserPart.META)],
                    args=[part for e in group for part in (e.user_id, e.event_id)],
                )
                for group in by_user_slot.values()
            ],
        )

    async def _items_step(self, effects: list[Effects]) -> dict[str, tuple[list[str], list[str]]]:
        """Step 2; per own item of the batch, its (value, ref) per type now and its
        categories."""
        tasks: list[tuple[str, list[Any]]] = []
        for e in effects:
            tasks.append(
                (e.item_id, [e.marker, e.item_id, e.type, e.decay_ts_ms, e.neighbours, e.ts_ms])
            )
            for distance, other in enumerate(e.neighbours, start=1):
                tasks.append((other, [e.marker, other, "", distance, [e.item_id, e.ts_ms]]))
        by_slot = grouped(tasks, lambda task: self._slot(item_popularity_key(task[0])))
        groups = list(by_slot.values())
        replies = await self._raise_any(
            "item",
            [
                self._item(
                    keys=[item_popularity_key(group[0][0])],
                    args=[self.config, orjson.dumps([task for _, task in group])],
                )
                for group in groups
            ],
        )
        standing: dict[str, tuple[list[str], list[str]]] = {}
        for group, reply in zip(groups, replies, strict=True):
            for (item_id, task), answer in zip(group, reply, strict=True):
                if task[2] != "":
                    categories, values = answer
                    names = orjson.loads(categories) if categories else []
                    standing[item_id] = ([v.decode() for v in values], names)
        return standing

    async def _categories_step(self, standing: dict[str, tuple[list[str], list[str]]]) -> None:
        entries = [
            (category, item_id, values)
            for item_id, (values, names) in standing.items()
            for category in names
        ]
        if not entries:
            return
        by_slot = grouped(entries, lambda entry: self._slot(category_popular_key(entry[0])))
        await self._raise_any(
            "category",
            [
                self._category(
                    keys=[category_popular_key(group[0][0])],
                    args=[self.config, orjson.dumps(group)],
                )
                for group in by_slot.values()
            ],
        )

    async def _experiments_step(self, effects: list[Effects]) -> None:
        entries = []
        for e in effects:
            if not e.arm:
                continue
            run_id, _, arm = e.arm.partition("|")
            entries.append(
                (run_id, [e.marker, run_id, arm, e.type, int(e.recommended), list(e.sums)])
            )
        if not entries:
            return
        by_slot = grouped(entries, lambda entry: self._slot(experiment_key(entry[0])))
        await self._raise_any(
            "experiment",
            [
                self._experiment(
                    keys=[experiment_key(group[0][0])],
                    args=[
                        self.experiment_ttl_s,
                        self.marker_ttl_s,
                        orjson.dumps([entry for _, entry in group]),
                    ],
                )
                for group in by_slot.values()
            ],
        )

    async def _calls(self, step: str, calls: list[Awaitable[Any]]) -> list[Any]:
        """Run one step's script calls, a bounded number at once; per call its reply
        or its error (a cluster without the slot's node: `ClusterDownError`)."""
        self.last.calls[step] = self.last.calls.get(step, 0) + len(calls)
        return await bounded_calls(calls)

    async def _raise_any(self, step: str, calls: list[Awaitable[Any]]) -> list[Any]:
        replies = await self._calls(step, calls)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies


async def bounded_calls(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Script calls, at most MAX_CALLS_IN_FLIGHT at once; per call its reply or its
    error: a cluster without the slot's node (`ClusterDownError`), Redis's own, or an
    unreachable node (`RedisConnectionError`, as redis-py says it), never raised."""
    limit = asyncio.Semaphore(MAX_CALLS_IN_FLIGHT)

    async def bounded(call: Awaitable[Any]) -> Any:
        async with limit:
            try:
                return await call
            except RedisClusterException as exc:
                return ClusterDownError(str(exc))
            except RedisError as exc:
                return exc
            except OSError as exc:
                return RedisConnectionError(str(exc))

    return list(await asyncio.gather(*(bounded(call) for call in calls)))


def node_of(client: RedisCluster, key: str) -> str:
    """The node that serves `key`'s slot (as the client's slot map has it, once
    initialized): a step's calls are one per node, their scripts flagged to touch
    several slots of it (`keys.lua_script(cross_slot=True)`), so a batch of a few
    hundred events is a few calls a step, not one per user or item slot (3 primaries,
    100 events: 10 calls instead of 367; bench/reports/apply.md). A slot that moved
    since the map was read makes the call fail; the batch is applied again."""
    slot = int(client.keyslot(key))
    return str(client.nodes_manager.get_node_from_slot(slot).name)


def _rows(events: Sequence[Event], fingerprints: Sequence[str], indexes: list[int]) -> bytes:
    return orjson.dumps(
        [
            (e.event_id, e.user_id, e.item_id, e.type.value, e.ts_ms, fingerprints[i])
            for i in indexes
            for e in (events[i],)
        ]
    )


T = TypeVar("T")


def grouped(values: Iterable[T], slot_of: Callable[[T], str]) -> dict[str, list[T]]:
    """`values` by `slot_of` (a node: `node_of`), each group in their order."""
    groups: dict[str, list[T]] = defaultdict(list)
    for value in values:
        groups[slot_of(value)].append(value)
    return groups


def _answers(reply: Any, n: int) -> list[Any]:
    if isinstance(reply, BaseException):
        return [reply] * n
    return list(reply)
