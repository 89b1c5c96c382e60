"""A bundle that passes its checksums but cannot be opened is refused like a corrupt
one: logged once, counted, listed under /model's `refused`, the old version serving,
the watcher alive for the next version. Rollback opens its target before it moves
CURRENT; a refused target is a 409 with the reason."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from bench.scenarios.models import point_current_at, publish
from bench.scenarios.users import apply, events_for
from devtools.scrape import counter_total
from streamrec import registry
from tests.model_server.conftest import ADMIN_TOKEN, Served, in_process, wait_until
from tests.streamrec.bad_bundles import BAD_BUNDLES, spoil

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def refusals(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return counter_total(text, "streamrec_model_swaps", outcome="refused")


async def served_version(client: httpx.AsyncClient, user_id: str) -> str:
    answer = await client.post("/recommend", json={"user_id": user_id, "k": 5})
    assert answer.status_code == 200, answer.text
    version: str = answer.json()["model_version"]
    return version


@pytest.mark.parametrize("kind", sorted(BAD_BUNDLES))
async def test_a_bundle_that_cannot_be_opened_is_refused_and_the_watcher_goes_on(
    served: Served, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    await apply(served.settings, events_for("bob", served.items[:5]))
    old = served.first.version
    bad = publish(served.models, served.root, old, make_current=False).version
    spoil(served.root, bad, kind)
    async with in_process(served.settings) as (client, _):
        with caplog.at_level(logging.ERROR, logger="streamrec.loaded"):
            point_current_at(served.root, bad)
            for _ in range(200):
                if await refusals(client) >= 1:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a few more polls: refused once, not on every poll
        assert await refusals(client) == 1
        assert len([r for r in caplog.records if bad in r.getMessage()]) == 1
        assert await served_version(client, "bob") == old
        model = (await client.get("/model")).json()
        assert model["model_version"] == old and bad in model["refused"]
        assert "\n" not in model["refused"][bad]

        reload = await client.post("/admin/reload", headers=ADMIN)
        assert reload.status_code == 409, reload.text
        assert reload.json()["error"] == "bundle_refused" and bad in reload.json()["detail"]

        good = publish(served.models, served.root, old).version
        for _ in range(200):
            if await served_version(client, "bob") == good:
                break
            await asyncio.sleep(0.05)
        assert await served_version(client, "bob") == good
        assert bad in (await client.get("/model")).json()["refused"]


async def test_a_refused_rollback_target_is_a_409_and_moves_nothing(served: Served) -> None:
    settings = served.settings.model_copy(update={"registry_poll_s": 60.0})
    first = served.first.version
    second = publish(served.models, served.root, first).version
    spoil(served.root, first, "truncated_onnx")
    async with in_process(settings) as (client, _):
        for body in ({}, {"version": first}):
            back = await client.post("/admin/rollback", headers=ADMIN, json=body)
            assert back.status_code == 409, back.text
            assert back.json()["error"] == "rollback_refused"
            assert "ranker.onnx" in back.json()["detail"]
            assert registry.current_version(served.root) == second
        for name in ("CURRENT", "v-none", "../escape"):
            back = await client.post("/admin/rollback", headers=ADMIN, json={"version": name})
            assert back.status_code in (409, 422), back.text
            assert registry.current_version(served.root) == second
        assert await refusals(client) == 2
        model = (await client.get("/model")).json()
        assert model["model_version"] == second and first in model["refused"]


async def test_rolling_back_to_the_served_version_moves_the_pointer_back(
    served: Served,
) -> None:
    """CURRENT names a bad version the server refused: rolling back to the one it still
    serves puts the pointer right for every replica, without a swap."""
    settings = served.settings.model_copy(update={"registry_poll_s": 0.1})
    first = served.first.version
    bad = publish(served.models, served.root, first, make_current=False).version
    spoil(served.root, bad, "manifest_without_max_len")
    async with in_process(settings) as (client, app):
        point_current_at(served.root, bad)
        holder = app.state.serving.holder
        await wait_until(lambda: bad in holder.refused)
        back = await client.post("/admin/rollback", headers=ADMIN, json={"version": first})
        assert back.json() == {"outcome": "unchanged", "model_version": first, "previous": first}
        assert registry.current_version(served.root) == first
        back = await client.post("/admin/rollback", headers=ADMIN, json={"version": "CURRENT"})
        assert back.status_code == 409 and back.json()["error"] == "rollback_refused"
