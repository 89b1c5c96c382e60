"""The loop each of a server process's followers of Redis runs (the popularity
table, the catalogue mirror, the live items): a step every interval, sooner when
woken, until stopped; a step that fails is logged and the next one reads on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Polling:
    def __init__(self, interval_s: float, what: str) -> None:
        self.interval_s = interval_s
        self.what = what  # for the log line of a failed step
        self._stopped = False
        self._wake = asyncio.Event()

    async def run(
        self, step: Callable[[], Awaitable[object]], failures: tuple[type[Exception], ...]
    ) -> None:
        """Run `step` until `stop()`. Stopped by a flag, not by cancelling: a
        cancellation that lands inside redis-py can be lost."""
        while not self._stopped:
            try:
                await step()
            except failures as exc:
                log.warning("%s failed: %s", self.what, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()

    def wake(self) -> None:
        """Run the next step now."""
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
