"""`model.versions`: what a retrain cycle says when it publishes a version.

Servers, the recommendations feed and stream workers follow the registry's
current pointer; an announcement wakes their watcher at once, so a published
version is served as soon as it loads instead of at the next poll. The poll
stays the fallback: a lost announcement, or a broker the process cannot reach,
costs at most `registry_poll_s`, and never stops the process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from streamrec.kafka_client import kafka_python_options
from streamrec.settings import Settings

log = logging.getLogger(__name__)

RETRY_MAX_S = 30.0
# How long a cancelled listener lets its consumer's start finish before it gives up.
START_WAIT_S = 5.0


class Startable(Protocol):
    async def start(self) -> None: ...


async def start_whole(client: Startable) -> None:
    """`client.start()`, let finish (up to `START_WAIT_S`) when the caller is cancelled
    meanwhile, then the cancellation raised: aiokafka leaves its bootstrap connection
    open, until garbage collection closes it with a ResourceWarning, when its start
    is cancelled while it waits for the first metadata (seen as a test failure)."""
    starting = asyncio.ensure_future(client.start())
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        done, _ = await asyncio.wait({starting}, timeout=START_WAIT_S)
        if not done:
            starting.cancel()
        elif not starting.cancelled():
            starting.exception()  # a failed start: retrieved, the caller is going away
        raise


async def wake_on_announcements(settings: Settings, wake: asyncio.Event) -> None:
    """Set `wake` on every record of `model.versions` from now on, until cancelled.
    No consumer group: every process hears every announcement, and none is
    replayed from before the process started (it loads the current version then)."""
    retry_s = 1.0
    while True:
        consumer = AIOKafkaConsumer(
            settings.topic_model_versions,
            **kafka_python_options(settings),  # aiokafka takes the same option names
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        try:
            await start_whole(consumer)
            retry_s = 1.0
            async for record in consumer:
                log.info(
                    "model announcement: %s", (record.value or b"")[:200].decode(errors="replace")
                )
                wake.set()
        except KafkaError as exc:
            log.warning(
                "model announcements unavailable (%s); the registry poll goes on, retry in %.0f s",
                exc,
                retry_s,
            )
        finally:
            await consumer.stop()
        await asyncio.sleep(retry_s)
        retry_s = min(2 * retry_s, RETRY_MAX_S)
