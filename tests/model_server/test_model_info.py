"""/model names versions, files of a bundle relative to the registry and the
training data by its folder's name, never a server path; why a version was
refused only to the admin scope."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench.scenarios.models import point_current_at, publish
from tests.model_server.conftest import ADMIN_TOKEN, Served, in_process
from tests.streamrec.bad_bundles import spoil

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_model_shows_no_server_paths(served: Served) -> None:
    bad = publish(served.models, served.root, served.first.version, make_current=False).version
    spoil(served.root, bad, "manifest_without_max_len")
    async with in_process(served.settings) as (client, _):
        point_current_at(served.root, bad)
        for _ in range(200):
            # The reasons are for the admin scope (model_server/access.py).
            model = (await client.get("/model", headers=ADMIN)).json()
            if bad in model["refused"]:
                break
            await asyncio.sleep(0.05)
    reason = model["refused"][bad]
    assert f"{bad}/manifest.json" in reason and "max_len" in reason
    shown = json.dumps(model)
    assert str(served.root) not in shown and str(served.root.parent) not in shown
