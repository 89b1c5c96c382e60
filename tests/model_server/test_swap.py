"""Hot swap: new versions replace old ones without a failed request, corrupt ones
are refused while the old one keeps serving, and operators can roll back."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from bench.scenarios.models import corrupt, point_current_at, publish
from bench.scenarios.users import apply, events_for
from devtools.processes import ServiceProcess
from devtools.scrape import counter_total, histogram_count
from streamrec import registry
from streamrec.loaded import open_model
from streamrec.state import StateStore
from streamrec.user_vectors import cached_user_vector, user_encoder_inputs
from tests.model_server.conftest import ADMIN_TOKEN, Served, in_process, wait_until

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
        model = (await client.get("/model", headers=ADMIN)).json()  # reasons: admin scope
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


async def test_a_new_version_swaps_in_with_the_vectors_of_users_answered_lately(
    served: Served,
) -> None:
    users = [f"pre-{n}" for n in range(5)]
    for n, user in enumerate(users):
        await apply(served.settings, events_for(user, served.items[n : n + 4]))
    # An item the first version does not know may be known to the next: this user's
    # inputs cannot be reused, and their next request runs the encoder.
    odd = events_for("odd", [*served.items[:3], "an-item-no-model-knows"])
    await apply(served.settings, odd)
    store = StateStore(served.settings)
    async with in_process(served.settings) as (client, _):
        try:
            for user in [*users, "odd"]:
                answer = await client.post("/recommend", json={"user_id": user, "k": 5})
                assert answer.json()["model_version"] == served.first.version

            async def encodes() -> float:
                text = (await client.get("/metrics")).text
                return histogram_count(text, "streamrec_serve_stage_seconds", stage="encode")

            second = publish(served.models, served.root, parent=served.first.version)
            for _ in range(200):
                if (await client.get("/model")).json()["model_version"] == second.version:
                    break
                await asyncio.sleep(0.05)
            text = (await client.get("/metrics")).text
            warmed = counter_total(text, "streamrec_serve_vector_refreshes", outcome="refreshed")
            assert warmed == len(users)
            before = await encodes()
            for user in users:
                answer = await client.post("/recommend", json={"user_id": user, "k": 5})
                assert answer.json()["model_version"] == second.version
            assert await encodes() == before  # no request ran the encoder
            await client.post("/recommend", json={"user_id": "odd", "k": 5})
            assert await encodes() == before + 1
            # The answers wrote the new version's vectors back: the very vectors its
            # encoder computes from the users' state.
            model = open_model(served.root, second.version)
            for _ in range(100):
                states = await store.read_users(users)
                cached = {s.cached_vector.model_version for s in states if s.cached_vector}
                if cached == {second.version}:
                    break
                await asyncio.sleep(0.05)
            assert cached == {second.version}
            for state in states:
                inputs = user_encoder_inputs(model, state.recent_events)
                assert inputs is not None
                computed = model.bundle.user_vectors(*inputs)
                cached_vector = cached_user_vector(model, state)
                assert cached_vector is not None
                assert np.allclose(cached_vector, computed, atol=1e-5)
        finally:
            await store.close()
