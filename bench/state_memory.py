"""`streamrec bench memory`: Redis memory per user, per item and per dedup key, measured.

Applies the whole Taobao stream, then a user pushed past every cap and an item
with `covis_neighbours_max` co-visitation links, to a fresh Redis and reads
`MEMORY USAGE` of the keys `streamrec/state.py` writes.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from pathlib import Path

import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import track

from bench.common import REPORTS, machine, machine_line, write_json
from bench.ingest import load_messages
from devtools.devstack import DevStack
from streamrec.events import Event, EventType
from streamrec.keys import UserPart, item_covis_key, item_popularity_key, trending_key, user_key
from streamrec.settings import Settings
from streamrec.state import StateStore

USER_PARTS = (UserPart.RECENT, UserPart.PURCHASED, UserPart.ITEMS, UserPart.COUNTS, UserPart.META)
COVIS_EPOCH_FIELD = "cv:epoch"
# Taobao item ids are numbers of up to 7 digits; a listpack stores such members as
# integers, so the full item's neighbours get ids of that shape.
FULL_ITEM, FULL_ITEM_BASE = "9000000", 3_000_000
EPOCH_SAMPLE_ITEMS = 5000
console = Console()


async def _usage(client: aioredis.Redis, keys: list[str]) -> int:
    total = 0
    for key in keys:
        total += int(await client.memory_usage(key, samples=0) or 0)
    return total


async def _epoch_field_bytes(client: aioredis.Redis, item_ids: list[str]) -> float:
    """What the `cv:epoch` field adds to an item's popularity hash: its usage with
    and without it (destructive, so measured last)."""
    added = 0
    for item_id in item_ids:
        key = item_popularity_key(item_id)
        with_field = await _usage(client, [key])
        await client.hdel(key, COVIS_EPOCH_FIELD)
        added += with_field - await _usage(client, [key])
    return added / max(len(item_ids), 1)


def _full_item_events(settings: Settings, start_ms: int) -> list[Event]:
    """More users than the cap each touch their own item, then FULL_ITEM: FULL_ITEM
    keeps `covis_neighbours_max` links, the strongest (latest) ones."""
    events = []
    for n in range(settings.covis_neighbours_max + 10):
        user_id, ts_ms = f"covis-user-{n}", start_ms + 2 * n
        events.append(Event(f"cv-{n}-a", user_id, str(FULL_ITEM_BASE + n), EventType.CLICK, ts_ms))
        events.append(Event(f"cv-{n}-b", user_id, FULL_ITEM, EventType.CLICK, ts_ms + 1))
    return events


async def measure(settings: Settings) -> dict[str, object]:
    store = StateStore(settings)
    client = store.redis
    assert isinstance(client, aioredis.Redis), "measured on a single Redis"
    await client.flushdb()
    events = [event for event, _ in load_messages(10**9)]
    for start in track(range(0, len(events), 1000), description="applying Taobao events"):
        await store.apply_events(events[start : start + 1000])
    users = sorted({e.user_id for e in events})
    items = sorted({e.item_id for e in events})

    user_bytes = 0
    for user_id in users:
        user_bytes += await _usage(client, [user_key(user_id, part) for part in USER_PARTS])
    item_bytes = await _usage(client, [item_popularity_key(i) for i in items])
    dedup_sample = [f"sr:u:{{{e.user_id}}}:dd:{e.event_id}" for e in events[:5000]]
    dedup_bytes = await _usage(client, dedup_sample) / len(dedup_sample)
    trend_bytes = sum([await _usage(client, [trending_key(t)]) for t in EventType])
    trend_members = sum([int(await client.zcard(trending_key(t))) for t in EventType])

    # Co-visitation after the stream; "typical" is the mean item that has any link
    # (an item whose users touched nothing else has none).
    linked = [i for i in items if await client.exists(item_covis_key(i))]
    covis_bytes = [await _usage(client, [item_covis_key(i)]) for i in linked]
    covis_links = [int(await client.zcard(item_covis_key(i))) for i in linked]

    # One user past every cap: 600 events over 400 distinct items, a third purchases.
    heavy = [
        Event(f"heavy-{n}", "heavy-user", f"item-{n % 400:06d}",
              EventType.PURCHASE if n % 3 == 0 else EventType.CLICK, 1_511_700_000_000 + n)
        for n in range(600)
    ]  # fmt: skip
    await store.apply_events(heavy)
    capped = await _usage(client, [user_key("heavy-user", part) for part in USER_PARTS])

    await store.apply_events(_full_item_events(settings, 1_511_800_000_000))
    full_links = int(await client.zcard(item_covis_key(FULL_ITEM)))
    assert full_links == settings.covis_neighbours_max, full_links
    full_bytes = await _usage(client, [item_covis_key(FULL_ITEM)])
    epoch_bytes_full = await _epoch_field_bytes(client, [FULL_ITEM])
    epoch_sample = linked[:EPOCH_SAMPLE_ITEMS]
    epoch_bytes_taobao = await _epoch_field_bytes(client, epoch_sample)
    info = await client.info("memory")
    await client.flushdb()
    await store.close()
    return {
        "users": len(users),
        "items": len(items),
        "events": len(events),
        "bytes_per_user_taobao_mean": round(user_bytes / len(users), 1),
        "bytes_per_user_at_caps": capped,
        "bytes_per_item_popularity": round(item_bytes / len(items), 1),
        "bytes_per_trending_member": round(trend_bytes / max(trend_members, 1), 1),
        "bytes_per_dedup_key": round(dedup_bytes, 1),
        "used_memory_bytes_after_taobao": int(info["used_memory"]),
        "covis": {
            "items_with_links_taobao": len(linked),
            "links_per_linked_item_taobao_mean": round(statistics.fmean(covis_links), 2),
            "links_per_linked_item_taobao_max": max(covis_links),
            "zset_bytes_per_linked_item_taobao_mean": round(statistics.fmean(covis_bytes), 1),
            "zset_bytes_per_linked_item_taobao_median": statistics.median(covis_bytes),
            "zset_bytes_taobao_total": sum(covis_bytes),
            "epoch_field_bytes_taobao_mean": round(epoch_bytes_taobao, 1),
            "epoch_field_sample_items": len(epoch_sample),
            "full_item_links": full_links,
            "zset_bytes_full_item": full_bytes,
            "epoch_field_bytes_full_item": round(epoch_bytes_full, 1),
        },
        "caps": {
            "recent_events_max": settings.recent_events_max,
            "user_items_max": settings.user_items_max,
            "purchased_max": settings.purchased_max,
            "trending_max_items": settings.trending_max_items,
            "item_ttl_s": settings.item_ttl_s,
            "covis_window": settings.covis_window,
            "covis_neighbours_max": settings.covis_neighbours_max,
            "covis_half_life_s": settings.covis_half_life_s,
            "covis_backward": settings.covis_backward,
        },
    }


def run() -> dict[str, object]:
    home = Path(tempfile.mkdtemp(prefix="streamrec-mem-"))
    stack = DevStack(home)
    status = stack.up()
    try:
        settings = Settings(home=home, redis_url=status.redis_url or "", kafka_bootstrap="unused:1")
        result = asyncio.run(measure(settings))
    finally:
        stack.down()
    result |= {"command": "streamrec bench memory", "machine": machine()}
    write_json("state_memory", result)
    m = result["machine"]
    covis = result["covis"]
    caps = result["caps"]
    assert isinstance(m, dict) and isinstance(covis, dict) and isinstance(caps, dict)
    full_total = covis["zset_bytes_full_item"] + covis["epoch_field_bytes_full_item"]
    typical_total = (
        covis["zset_bytes_per_linked_item_taobao_mean"] + covis["epoch_field_bytes_taobao_mean"]
    )
    lines = [
        "# Redis memory of the state layout",
        "",
        f"Command: `streamrec bench memory`; Redis `MEMORY USAGE` (samples=0) after applying "
        f"all {result['events']:,} Taobao events ({result['users']:,} users, {result['items']:,} "
        f"items). {machine_line(m)}",
        "",
        "| what | bytes |",
        "|---|---|",
        f"| per user, Taobao mean (1–2 events each) | {result['bytes_per_user_taobao_mean']} |",
        f"| per user at every cap (50 recent, 200 items, 200 purchases) | "
        f"{result['bytes_per_user_at_caps']} |",
        f"| per item (decayed popularity hash, `cv:epoch` included) | "
        f"{result['bytes_per_item_popularity']} |",
        f"| per trending member (all types together) | {result['bytes_per_trending_member']} |",
        f"| per dedup key (lives `dedup_ttl_s`, default 24 h) | {result['bytes_per_dedup_key']} |",
        "",
        f"Co-visitation (`covis_window` {caps['covis_window']}, `covis_neighbours_max` "
        f"{caps['covis_neighbours_max']}, `covis_backward` {caps['covis_backward']}), per item:",
        "",
        "| item | links | `sr:i:{I}:cv` zset | `cv:epoch` field | together |",
        "|---|---|---|---|---|",
        f"| full ({covis['full_item_links']} links, the cap; 7-digit neighbour ids) | "
        f"{covis['full_item_links']} | {covis['zset_bytes_full_item']} | "
        f"{covis['epoch_field_bytes_full_item']} | {full_total:g} |",
        f"| Taobao, mean of the {covis['items_with_links_taobao']:,} items with links "
        f"(median zset {covis['zset_bytes_per_linked_item_taobao_median']:g}) | "
        f"{covis['links_per_linked_item_taobao_mean']} (max "
        f"{covis['links_per_linked_item_taobao_max']}) | "
        f"{covis['zset_bytes_per_linked_item_taobao_mean']} | "
        f"{covis['epoch_field_bytes_taobao_mean']} | {typical_total:.1f} |",
        "",
        f"`cv:epoch` is what removing the field takes off the item's popularity hash "
        f"(the mean over {covis['epoch_field_sample_items']:,} linked Taobao items). All "
        f"co-visitation zsets after the Taobao stream: {covis['zset_bytes_taobao_total']:,} bytes.",
        "",
    ]
    (REPORTS / "state_memory.md").write_text("\n".join(lines))
    console.print_json(data={k: v for k, v in result.items() if k != "machine"})
    return result
