"""`streamrec bench catalogue`'s pieces on a tiny catalogue (nothing timed is
asserted): the bench model's kind (real sessions, bench categories, a content tower)
grown with synthetic items and published with an HNSW index below a lowered
threshold, recall against exact search, live additions; recall@C by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.catalogue import (
    CUTOFFS,
    Plan,
    flat_copy,
    index_memory,
    measure_index,
    p99_ratios,
    publish_grown,
    recall_at,
    recall_sweep,
)
from bench.scenarios.data import yoochoose_sessions
from bench.scenarios.models import TINY_PLAN
from bench.serve import bench_categories
from retrain.training import TrainedModels, train_models
from streamrec import registry
from streamrec.loaded import open_model
from streamrec.settings import Settings

ITEMS = 3000
PLAN = Plan(items=ITEMS, train_sessions=600, users=0, rates=(250,), seconds=1, queries=100,
            ef_searches=(200, 4 * ITEMS), live_items=1500, hnsw_adds=50)  # fmt: skip


def test_recall_at_is_the_share_of_the_exact_top_found() -> None:
    approximate = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    exact = np.array([[1, 2, 9, 4], [8, 7, 6, 5]])
    assert recall_at(approximate, exact, 2) == pytest.approx(0.5)  # (2/2 + 0/2) / 2
    assert recall_at(approximate, exact, 4) == pytest.approx(0.875)  # (3/4 + 4/4) / 2


@pytest.fixture(scope="module")
def trained() -> TrainedModels:
    sessions = yoochoose_sessions(PLAN.train_sessions)
    categories = bench_categories(item for s in sessions for item in s.item_ids)
    return train_models(
        sessions, TINY_PLAN, progress=False, categories={i: (c,) for i, c in categories.items()}
    )


@pytest.fixture(scope="module")
def grown(
    trained: TrainedModels, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, dict[str, Any]]:
    home = tmp_path_factory.mktemp("catalogue")
    settings = Settings(home=home, registry=home / "registry", hnsw_threshold=ITEMS // 3)
    return settings, publish_grown(trained, TINY_PLAN, settings, ITEMS)


def test_the_grown_catalogue_is_published_with_an_hnsw_index(
    trained: TrainedModels, grown: tuple[Settings, dict[str, Any]]
) -> None:
    settings, build = grown
    manifest = registry.verify(settings.registry, build["version"])
    assert manifest.index["kind"] == "hnsw" and manifest.index["n_items"] == ITEMS
    assert build["index"]["build_seconds"] >= 0 and build["publish_seconds"] >= 0
    assert {"items.faiss", "vocab.json", "user_encoder.onnx"} <= set(build["bundle_files_mb"])
    # Calibrated: synthetic items about as near the trained ones as those are to each other.
    spread = build["spread"]
    assert 0 < build["noise_scale"] < 4
    assert spread["mean_cosine_synthetic_to_nearest_real"] == pytest.approx(
        spread["mean_cosine_real_to_nearest_real"], abs=0.05
    )
    vocab = registry.load(settings.registry, build["version"]).item_ids
    assert vocab[: len(trained.vocab)] == list(trained.vocab.item_ids)  # rows kept
    memory = index_memory(settings.registry / build["version"] / "items.faiss")
    assert memory["index_file_bytes"] > 0 and "index_rss_growth_bytes" in memory


def test_recall_against_exact_search_and_live_additions(
    grown: tuple[Settings, dict[str, Any]],
) -> None:
    settings, build = grown
    measured = measure_index(settings, build["version"], [], PLAN)
    assert measured["served_ef_search"] == build["index"]["ef_search"]
    assert measured["recall_users"] == []  # no users asked
    for kind in ("recall_sessions", "recall_items"):
        rows = measured[kind]
        assert [row["ef_search"] for row in rows] == list(PLAN.ef_searches)
        assert all(0 <= row[f"recall@{c}"] <= 1 for row in rows for c in CUTOFFS)
        assert rows[0]["queries"] == PLAN.queries
        # efSearch beyond the catalogue visits the whole graph: exact.
        assert rows[-1]["recall@200"] >= 0.99
    assert measured["flat_search_ms_per_query"] > 0
    assert measured["live"]["items"] == PLAN.live_items and measured["live"]["per_second"] > 0
    assert measured["hnsw_adds"]["items"] == PLAN.hnsw_adds


def test_an_exact_index_has_recall_one_against_itself(
    grown: tuple[Settings, dict[str, Any]],
) -> None:
    settings, build = grown
    model = open_model(settings.registry, build["version"])
    flat = flat_copy(model.bundle.index)
    queries = model.item_vectors(list(range(1, 51)))
    (row,) = recall_sweep(flat, flat, queries, (0,))
    assert row["ef_search"] is None
    assert all(row[f"recall@{c}"] == 1.0 for c in CUTOFFS)


def _run(rate: int, p99_ms: float, errors: int = 0) -> dict[str, Any]:
    return {"rate": rate, "p99_ms": p99_ms, "errors": errors, "achieved_rate": rate}


def test_the_p99_ratio_is_given_only_where_both_servers_held_the_rate() -> None:
    trained = {"runs": [_run(250, 4.0), _run(1000, 10.0)]}
    grown = {"runs": [_run(250, 6.0), replace_errors(_run(1000, 900.0), 12)]}
    ratios = p99_ratios([trained, grown])
    assert ratios[0]["ratio"] == 1.5 and ratios[0]["held"]
    assert ratios[1]["ratio"] is None and not ratios[1]["held"]


def replace_errors(run: dict[str, Any], errors: int) -> dict[str, Any]:
    return {**run, "errors": errors}
