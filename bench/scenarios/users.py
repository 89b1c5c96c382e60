"""Made-up users for a scenario: their events, written straight into the state in
Redis (no broker, no worker)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from streamrec.events import Event, EventType
from streamrec.settings import Settings
from streamrec.state import StateStore


def events_for(
    user_id: str, items: Iterable[str], event_type: EventType = EventType.CLICK, start: int = 0
) -> list[Event]:
    now_ms = int(time.time() * 1000)
    return [
        Event(f"{user_id}-{event_type.value}-{start + n}", user_id, item, event_type, now_ms + n)
        for n, item in enumerate(items)
    ]


async def apply(settings: Settings, events: list[Event]) -> None:
    store = StateStore(settings)
    try:
        await store.apply_events(events)
    finally:
        await store.close()
