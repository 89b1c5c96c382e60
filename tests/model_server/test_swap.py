"""Hot swap: new versions replace old ones without a failed request, corrupt ones
are refused while the old one keeps serving, and operators can roll back."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from streamrec import registry
from streamrec.processes import ServiceProcess
from streamrec.scrape import counter_total
from tests.model_server.conftest import (
    ADMIN_TOKEN,
    Served,
    apply,
    corrupt,
    events_for,
    in_process,
    point_current_at,
    publish,
    wait_until,
)

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_swap_under_concurrent_load(served: Served, server_process: ServiceProcess) -> None:
    await apply(served.settings, events_for("alice", served.items[:5]))
    url = f"http://127.0.0.1:{served.settings.serve_port}"
    versions: list[list[str]] = [[] for _ in range(8)]
    failures: list[str] = []
    stop = asyncio.Event()

    async def keep_asking(client: httpx.AsyncClient, seen: list[str]) -> None:
        while not stop.is_set():
            response = await client.post("/recommend", json={"user_id": "alice", "k": 10})
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text}")
                continue
            body = response.json()
            # A retrieval-order answer under the latency budget is an answer, not a failure.
            if body["fallback"] not in (None, "retrieval") or len(body["items"]) != 10:
                failures.append(str(body))
            seen.append(body["model_version"])

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        askers = [asyncio.create_task(keep_asking(client, seen)) for seen in versions]
        await wait_until(lambda: all(len(seen) >= 5 for seen in versions))
        second = await asyncio.to_thread(publish, served.models, served.root, served.first.version)
        await wait_until(lambda: all(seen[-1] == second.version for seen in versions if seen))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*askers)
        metrics = (await client.get("/metrics")).text

    assert failures == []
    old, new = served.first.version, second.version
    for seen in versions:
        switched = seen.index(new)
        assert switched > 0
        assert set(seen[:switched]) == {old} and set(seen[switched:]) == {new}
    assert counter_total(metrics, "streamrec_model_swaps", outcome="swapped") == 2
    assert counter_total(metrics, "streamrec_model_swaps", outcome="refused") == 0


async def test_a_corrupt_bundle_is_refused_and_the_old_one_keeps_serving(served: Served) -> None:
    await apply(served.settings, events_for("bob", served.items[:5]))
    bad = publish(served.models, served.root, served.first.version, make_current=False)
    corrupt(served.root, bad.version)
    async with in_process(served.settings) as (client, _):

        async def refusals() -> float:
            text = (await client.get("/metrics")).text
            return counter_total(text, "streamrec_model_swaps", outcome="refused")

        point_current_at(served.root, bad.version)
        for _ in range(100):
            if await refusals() >= 1:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the watcher must not retry it on every poll
        assert await refusals() == 1
        answer = await client.post("/recommend", json={"user_id": "bob", "k": 5})
        assert answer.status_code == 200
        assert answer.json()["model_version"] == served.first.version
        model = (await client.get("/model")).json()
        assert model["model_version"] == served.first.version
        assert "ranker.onnx" in model["refused"][bad.version]

        reload = await client.post("/admin/reload", headers=ADMIN)
        assert reload.status_code == 409
        assert reload.json()["error"] == "bundle_refused"
        assert await refusals() == 2

        good = publish(served.models, served.root, served.first.version)
        for _ in range(100):
            body = (await client.post("/recommend", json={"user_id": "bob", "k": 5})).json()
            if body["model_version"] == good.version:
                break
            await asyncio.sleep(0.05)
        assert body["model_version"] == good.version


async def test_rollback_to_the_parent_and_to_a_named_version(served: Served) -> None:
    settings = served.settings.model_copy(update={"registry_poll_s": 60.0})
    second = publish(served.models, served.root, served.first.version)
    async with in_process(settings) as (client, _):
        assert (await client.get("/model")).json()["model_version"] == second.version
        back = await client.post("/admin/rollback", headers=ADMIN)
        assert back.json() == {
            "outcome": "swapped",
            "model_version": served.first.version,
            "previous": second.version,
        }
        assert registry.current_version(served.root) == served.first.version
        forward = await client.post(
            "/admin/rollback", headers=ADMIN, json={"version": second.version}
        )
        assert forward.json()["model_version"] == second.version
        nowhere = await client.post("/admin/rollback", headers=ADMIN, json={"version": "v-none"})
        assert nowhere.status_code == 409
        assert (await client.get("/model")).json()["model_version"] == second.version
        point_current_at(served.root, served.first.version)
        reload = await client.post("/admin/reload", headers=ADMIN)
        assert reload.json()["model_version"] == served.first.version
