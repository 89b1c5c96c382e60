"""`model.versions`: an announcement makes a server swap at once, without waiting for
its registry poll; a server that cannot hear announcements still follows by polling."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.scenarios.models import publish
from retrain.cycle import CycleResult, announce
from streamrec.topics import ensure_topics
from tests.model_server.conftest import Served, in_process

pytestmark = pytest.mark.integration


async def test_an_announcement_swaps_a_server_that_would_not_poll_for_an_hour(
    served: Served,
) -> None:
    settings = served.settings.model_copy(update={"registry_poll_s": 3600.0})
    ensure_topics(settings)
    async with in_process(settings) as (client, _):
        assert (await client.get("/model")).json()["model_version"] == served.first.version
        second = await asyncio.to_thread(publish, served.models, served.root, served.first.version)
        await asyncio.sleep(1.0)
        # CURRENT moved, nothing announced: the poll is an hour away.
        assert (await client.get("/model")).json()["model_version"] == served.first.version

        said = CycleResult("published", "test", served.first.version, second.version)
        deadline = time.monotonic() + 20
        while (await client.get("/model")).json()["model_version"] != second.version:
            # Announced again until heard: the listener starts from the topic's end,
            # so a record sent before it has its position would not reach it.
            assert time.monotonic() < deadline, "the announcement was not followed"
            await asyncio.to_thread(announce, settings, said)
            await asyncio.sleep(0.5)


async def test_without_a_broker_the_poll_still_follows(served: Served) -> None:
    settings = served.settings.model_copy(
        update={"registry_poll_s": 0.2, "kafka_bootstrap": "127.0.0.1:9"}  # nothing listens
    )
    async with in_process(settings) as (client, _):
        second = await asyncio.to_thread(publish, served.models, served.root, served.first.version)
        deadline = time.monotonic() + 20
        while (await client.get("/model")).json()["model_version"] != second.version:
            assert time.monotonic() < deadline, "the poll did not follow CURRENT"
            await asyncio.sleep(0.1)
