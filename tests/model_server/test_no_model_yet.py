"""A deployment boots before any model exists (issue 18): with
`serve_wait_for_model` the server starts, says 503 no_model (its readiness too),
and serves the first version as soon as it is published; without it, start-up
still stops at once with the reason (tests/test_startup_failures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scenarios.models import publish
from bench.scenarios.users import apply, events_for
from tests.model_server.conftest import Served, in_process, wait_until_async

pytestmark = pytest.mark.integration


async def test_a_server_waits_for_its_first_model(served: Served, tmp_path: Path) -> None:
    empty = tmp_path / "empty-registry"
    settings = served.settings.model_copy(
        update={"registry": empty, "serve_wait_for_model": True, "follow_announcements": False}
    )
    await apply(settings, events_for("ann", served.items[:3]))
    body = {"user_id": "ann", "k": 3}
    async with in_process(settings) as (client, _):
        alive = await client.get("/healthz")
        unready = await client.get("/readyz")
        waiting = await client.post("/v1/recommend", json=body)
        model = await client.get("/v1/model")
        versions = await client.get("/v1/versions")
        first = publish(served.models, empty)

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_until_async(ready, 10)
        answered = await client.post("/v1/recommend", json=body)
    assert alive.status_code == 200
    assert unready.status_code == 503 and unready.json() == {"ready": False, "reason": "no_model"}
    assert waiting.status_code == 503 and waiting.json()["error"] == "no_model"
    assert waiting.headers["retry-after"] == "5"
    assert model.status_code == 503
    assert versions.status_code == 200 and versions.json()["served"] is None
    assert answered.status_code == 200
    assert answered.json()["model_version"] == first.version
    assert len(answered.json()["items"]) == 3
