"""A bundle whose index is HNSW (a catalogue above STREAMREC_HNSW_THRESHOLD; here the
threshold is lowered to the tiny model's size) is served: /v1/model says so and a
/v1/recommend answer comes from it, retrieved through the graph; with
STREAMREC_SERVE_HNSW_EF_SEARCH it searches with that efSearch instead of the bundle's."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from bench.scenarios.models import TINY_PLAN
from bench.scenarios.users import apply, events_for
from bench.scenarios.workers import pipeline_names
from devtools.devstack import free_port
from retrain.publish import publish_models
from retrain.training import TrainedModels
from streamrec.settings import Settings
from tests.model_server.conftest import in_process

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("ef_search", [0, 300])
async def test_a_bundle_with_an_hnsw_index_answers(
    trained: TrainedModels, serve_settings: Settings, tmp_path: Path, ef_search: int
) -> None:
    redis.Redis.from_url(serve_settings.redis_url).flushdb()
    root = tmp_path / "registry"
    manifest = publish_models(
        trained, root, TINY_PLAN, {"source": "test"}, None, hnsw_threshold=len(trained.vocab)
    )
    assert manifest.index["kind"] == "hnsw"
    settings = serve_settings.model_copy(
        update={
            "registry": root,
            "serve_port": free_port(),
            "serve_hnsw_ef_search": ef_search,
            **pipeline_names("serve-hnsw"),
        }
    )
    items = list(trained.vocab.item_ids)
    await apply(settings, events_for("hnsw-fan", items[:5]))
    async with in_process(settings) as (client, app):
        served = app.state.serving.holder.current.bundle.index.hnsw.efSearch
        assert served == (ef_search or manifest.index["ef_search"])
        model = (await client.get("/v1/model")).json()
        assert model["model_version"] == manifest.version and model["index"]["kind"] == "hnsw"
        response = await client.post("/v1/recommend", json={"user_id": "hnsw-fan", "k": 10})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_version"] == manifest.version and not answer.get("fallback")
    assert len(answer["items"]) == 10
    assert {item["item_id"] for item in answer["items"]} <= set(items)
