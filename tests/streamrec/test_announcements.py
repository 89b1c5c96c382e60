"""Stopping the announcement listener while its consumer starts: the start is let
finish (aiokafka leaks its bootstrap connection when a start is cancelled midway),
within a bound, and the cancellation still ends the listener."""

from __future__ import annotations

import asyncio

import pytest

from streamrec import announcements
from streamrec.announcements import start_whole


class SlowStart:
    """A client whose start waits for `release` (a broker slow to answer)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = False

    async def start(self) -> None:
        await self.release.wait()
        self.started = True


async def test_a_cancelled_start_is_let_finish_before_the_cancellation_ends_it() -> None:
    client = SlowStart()
    task = asyncio.create_task(start_whole(client))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # still waiting for the start, not gone mid-way
    client.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.started


async def test_a_start_that_never_ends_is_given_up_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(announcements, "START_WAIT_S", 0.05)
    client = SlowStart()
    task = asyncio.create_task(start_whole(client))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2.0)
    assert not client.started


async def test_a_start_that_fails_raises_its_error() -> None:
    class Refused:
        async def start(self) -> None:
            raise ConnectionRefusedError("no broker")

    with pytest.raises(ConnectionRefusedError):
        await start_whole(Refused())
