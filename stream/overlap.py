"""Writing one batch while Faust collects the next, without acking early.

`take_events` acks a batch as soon as the loop body returns. Each message is
reference-counted, so the body takes one more reference per message and
returns at once; the write runs in the background and drops that reference
when the state is in Redis. The offset is committable only then. One write is
in flight at a time, so batches are written in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import faust
from faust.types import EventT

from stream.ingest import RawMessage

log = logging.getLogger(__name__)

# What a batch handler takes per message: a RawMessage, or what `convert` makes of one.
Message = TypeVar("Message")


class OverlappedWriter(Generic[Message]):
    def __init__(
        self,
        app: faust.App,
        handle_batch: Callable[[Sequence[Message]], Awaitable[None]],
        convert: Callable[[EventT[bytes]], Message],
    ) -> None:
        self.app = app
        self.handle_batch = handle_batch
        self.convert = convert
        self.in_flight: asyncio.Task[None] | None = None

    async def consume(
        self, batches: AsyncIterator[Sequence[EventT[bytes]]], shutdown_grace_s: float
    ) -> None:
        """An agent's loop: every batch written in order, the last one given
        `shutdown_grace_s` when the agent stops (`close`)."""
        try:
            async for events in batches:
                await self.submit(events)
            await self.drain()
        finally:
            await self.close(shutdown_grace_s)

    async def submit(self, events: Sequence[EventT[bytes]]) -> None:
        """Hold the batch's messages, wait for the previous write, start this one."""
        for event in events:
            event.message.incref()
        messages = [self.convert(event) for event in events]
        await self.drain()
        self.in_flight = asyncio.create_task(self._write(events, messages))

    async def drain(self) -> None:
        # A failed write raises here, the agent crashes and restarts; its
        # messages were never released, so they are delivered again.
        if self.in_flight is not None:
            in_flight, self.in_flight = self.in_flight, None
            await in_flight

    async def close(self, grace_s: float) -> None:
        """On shutdown: give the write in flight `grace_s` to finish, then cancel it (a
        write waiting out a Redis or broker outage must not hold the worker). Its
        messages stay unacknowledged and are delivered again; dedup makes that harmless."""
        if self.in_flight is None:
            return
        in_flight, self.in_flight = self.in_flight, None
        done, _ = await asyncio.wait({in_flight}, timeout=grace_s)
        if not done:
            log.warning("a batch write still waits after %.0f s of shutdown; abandoned", grace_s)
            in_flight.cancel()
        elif not in_flight.cancelled() and in_flight.exception() is not None:
            log.error("the last batch write failed during shutdown: %r", in_flight.exception())

    async def _write(self, events: Sequence[EventT[bytes]], messages: list[Message]) -> None:
        await self.handle_batch(messages)
        for event in events:
            event.message.ack(self.app.consumer)


def raw_message(event: EventT[bytes]) -> RawMessage:
    message = event.message
    return RawMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value or b"",  # a tombstone is judged like any malformed message
        timestamp_s=message.timestamp,
    )
