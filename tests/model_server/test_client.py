"""streamrec.client against `streamrec serve` in its own process."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scenarios.users import apply, events_for
from devtools.processes import ServiceProcess
from streamrec.client import AsyncRecommenderClient, RecommenderClient
from streamrec.errors import RequestRejected
from tests.model_server.conftest import Served

pytestmark = pytest.mark.integration


async def test_sync_and_async_clients(served: Served, server_process: ServiceProcess) -> None:
    await apply(served.settings, events_for("alice", served.items[:5]))
    url = f"http://127.0.0.1:{served.settings.serve_port}"
    async with AsyncRecommenderClient(url) as client:
        answer = await client.recommend("alice", k=7, exclude=[served.items[0]], explain=True)
        scores = await client.score("alice", [served.items[1], "unknown"])
    assert answer.model_version == served.first.version
    assert len(answer.items) == 7 and served.items[0] not in answer.item_ids
    assert answer.items[0].features is not None
    assert scores.unknown == ["unknown"]

    with RecommenderClient(url) as sync_client:
        again = sync_client.recommend("alice", k=7, exclude=[served.items[0]])
        assert again.item_ids == answer.item_ids
        assert sync_client.recommend("newcomer", k=3).fallback == "trending"
        # No catalogue here: nothing has a category, so including one leaves nothing.
        filtered = sync_client.recommend(
            "alice", k=3, item_filter={"include_categories": ["shoes"]}, max_per_category=1
        )
        assert filtered.item_ids == [] and filtered.short is True
        assert len(sync_client.recommend("alice", k=5, diversity=0.5).items) == 5
        with pytest.raises(RequestRejected) as rejected:
            sync_client.recommend("alice", k=0)
    assert rejected.value.status_code == 422
    assert "k" in str(rejected.value.detail)


def test_two_server_processes_share_the_port(served: Served, tmp_path: Path) -> None:
    settings = served.settings.model_copy(update={"serve_workers": 2})
    with (
        ServiceProcess(settings, ["serve"], tmp_path / "serve.log", settings.serve_port),
        RecommenderClient(f"http://127.0.0.1:{settings.serve_port}") as client,
    ):
        answers = [client.recommend("nobody", k=3) for _ in range(20)]
    assert {a.model_version for a in answers} == {served.first.version}
    assert {a.fallback for a in answers} == {"trending"}
