"""`streamrec bench memory`: Redis memory per user, per item and per dedup key, measured.

Applies the whole Taobao stream, then a user pushed past every cap, to a fresh
Redis and reads `MEMORY USAGE` of the keys `streamrec/state.py` writes.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import track

from bench.common import REPORTS, machine, write_json
from bench.ingest import load_messages
from streamrec.devstack import DevStack
from streamrec.events import Event, EventType
from streamrec.settings import Settings
from streamrec.state import StateStore, item_popularity_key, trending_key, user_key

USER_PARTS = ("ev", "buy", "items", "cnt", "meta")
console = Console()


async def _usage(client: aioredis.Redis, keys: list[str]) -> int:
    total = 0
    for key in keys:
        total += int(await client.memory_usage(key, samples=0) or 0)
    return total


async def measure(settings: Settings) -> dict[str, object]:
    store = StateStore(settings)
    client = store.redis
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

    # One user past every cap: 600 events over 400 distinct items, a third purchases.
    heavy = [
        Event(f"heavy-{n}", "heavy-user", f"item-{n % 400:06d}",
              EventType.PURCHASE if n % 3 == 0 else EventType.CLICK, 1_511_700_000_000 + n)
        for n in range(600)
    ]  # fmt: skip
    await store.apply_events(heavy)
    capped = await _usage(client, [user_key("heavy-user", part) for part in USER_PARTS])
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
        "caps": {
            "recent_events_max": settings.recent_events_max,
            "user_items_max": settings.user_items_max,
            "purchased_max": settings.purchased_max,
            "trending_max_items": settings.trending_max_items,
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
    assert isinstance(m, dict)
    lines = [
        "# Redis memory of the state layout",
        "",
        f"Command: `streamrec bench memory`; Redis `MEMORY USAGE` (samples=0) after applying "
        f"all {result['events']:,} Taobao events ({result['users']:,} users, {result['items']:,} "
        f"items). Machine: {m['cpu']}, {m['cores']} cores; {m['date']}, commit {m['commit']}.",
        "",
        "| what | bytes |",
        "|---|---|",
        f"| per user, Taobao mean (1–2 events each) | {result['bytes_per_user_taobao_mean']} |",
        f"| per user at every cap (50 recent, 200 items, 200 purchases) | "
        f"{result['bytes_per_user_at_caps']} |",
        f"| per item (decayed popularity hash) | {result['bytes_per_item_popularity']} |",
        f"| per trending member (all types together) | {result['bytes_per_trending_member']} |",
        f"| per dedup key (lives `dedup_ttl_s`, default 24 h) | {result['bytes_per_dedup_key']} |",
        "",
    ]
    (REPORTS / "state_memory.md").write_text("\n".join(lines))
    console.print_json(data={k: v for k, v in result.items() if k != "machine"})
    return result
