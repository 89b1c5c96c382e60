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

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from streamrec.kafka_client import kafka_python_options
from streamrec.settings import Settings

log = logging.getLogger(__name__)

RETRY_MAX_S = 30.0


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
            await consumer.start()
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
