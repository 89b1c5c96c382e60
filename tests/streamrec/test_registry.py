import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench.scenarios.models import TINY_PLAN, tiny_models
from retrain.publish import load_warm_start, publish_models
from retrain.training import TrainedModels
from streamrec import registry
from streamrec.errors import BundleError, ChecksumMismatch
from streamrec.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION, READABLE_FEATURE_SCHEMAS


@pytest.fixture(scope="module")
def models() -> TrainedModels:
    return tiny_models(sessions=600)


def _publish(models: TrainedModels, root: Path, parent: str | None = None) -> registry.Manifest:
    return publish_models(
        models, root, TINY_PLAN, {"source": "test"}, parent, hnsw_threshold=100_000
    )


def test_round_trip(models: TrainedModels, tmp_path: Path) -> None:
    manifest = _publish(models, tmp_path)
    assert registry.current_version(tmp_path) == manifest.version
    assert [m.version for m in registry.list_versions(tmp_path)] == [manifest.version]
    shown = registry.read_manifest(tmp_path, manifest.version)
    assert shown == manifest
    on_disk = sorted(p.name for p in (tmp_path / manifest.version).iterdir())
    assert on_disk == sorted([*manifest.files, registry.MANIFEST])
    for name, entry in manifest.files.items():
        assert entry["sha256"] == registry.sha256_of(tmp_path / manifest.version / name)
    assert manifest.index["kind"] == "flat" and manifest.index["n_items"] == len(models.vocab)
    assert manifest.data_window["items"] == len(models.vocab)
    assert "retriever_ranker" in manifest.metrics["validation"]

    loaded = registry.load(tmp_path)
    assert loaded.version == manifest.version
    rows = np.array([[0, 0, models.vocab.row(models.vocab.item_ids[0])]], dtype=np.int64)
    vector = loaded.user_vectors(
        rows, np.array([[0, 0, 1]]), np.array([[0, 0, 1]], dtype=np.float32)
    )
    scores, found = loaded.search(vector, 5)
    assert found.min() >= 1 and scores.shape == (1, 5)
    torch_items = models.encoder.item_vectors().detach().numpy()
    assert np.allclose(scores[0], vector[0] @ torch_items[found[0]].T, atol=1e-4)

    vocab, encoder = load_warm_start(tmp_path, manifest.version)
    assert vocab == models.vocab
    assert np.array_equal(encoder.item_vectors().detach().numpy(), torch_items)


def test_tampered_file_is_refused(models: TrainedModels, tmp_path: Path) -> None:
    manifest = _publish(models, tmp_path)
    index_file = tmp_path / manifest.version / "items.faiss"
    data = bytearray(index_file.read_bytes())
    data[-1] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=r"items\.faiss"):
        registry.verify(tmp_path, manifest.version)
    with pytest.raises(BundleError):
        registry.load(tmp_path)


def test_missing_file_and_incompatible_schema_are_refused(
    models: TrainedModels, tmp_path: Path
) -> None:
    manifest = _publish(models, tmp_path)
    folder = tmp_path / manifest.version
    body = json.loads((folder / registry.MANIFEST).read_text())
    body["feature_schema_version"] = 999
    (folder / registry.MANIFEST).write_text(json.dumps(body))
    with pytest.raises(BundleError, match="feature schema 999"):
        registry.load(tmp_path, manifest.version)
    body["feature_schema_version"] = FEATURE_SCHEMA_VERSION
    (folder / registry.MANIFEST).write_text(json.dumps(body))
    os.remove(folder / "ranker.onnx")
    with pytest.raises(BundleError, match=r"ranker\.onnx is listed in the manifest but missing"):
        registry.verify(tmp_path, manifest.version)


def test_rollback_and_atomic_pointer(models: TrainedModels, tmp_path: Path) -> None:
    first = _publish(models, tmp_path)
    second = _publish(models, tmp_path, parent=first.version)
    assert registry.current_version(tmp_path) == second.version
    assert registry.rollback(tmp_path) == first.version
    assert registry.current_version(tmp_path) == first.version
    registry.set_current(tmp_path, second.version)
    assert registry.current_version(tmp_path) == second.version
    # Only the pointer and the versions: no temporary or staging files left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [registry.CURRENT, first.version, second.version]
    )
    with pytest.raises(BundleError, match="no bundle"):
        registry.set_current(tmp_path, "v-does-not-exist")
    with pytest.raises(BundleError, match="must match"):
        registry.read_manifest(tmp_path, "../escape")
    assert registry.current_version(tmp_path) == second.version


@pytest.mark.parametrize("schema", [2, 3])
def test_a_bundle_of_a_previous_feature_schema_still_loads_and_ranks(
    models: TrainedModels, tmp_path: Path, schema: int
) -> None:
    """Schema 2 had the first 22 columns, schema 3 the first 24: its ranker is fed
    those, so a version trained before the catalogue's (or the price and newness)
    columns keeps serving after an upgrade."""
    from dataclasses import replace

    from retrain.ranker import Ranker, RankerConfig

    old_width = READABLE_FEATURE_SCHEMAS[schema]
    old_ranker = Ranker(RankerConfig(n_features=old_width, hidden=8))
    manifest = _publish(replace(models, ranker=old_ranker), tmp_path)
    assert manifest.feature_schema_version == schema
    assert manifest.feature_names == FEATURE_NAMES[:old_width]
    folder = tmp_path / manifest.version
    body = json.loads((folder / registry.MANIFEST).read_text())
    bundle = registry.load(tmp_path, manifest.version)
    rows = np.random.default_rng(0).random((3, len(FEATURE_NAMES)), np.float32)
    changed = rows.copy()
    changed[:, old_width:] = 7.0  # columns the old ranker never saw change nothing
    assert np.array_equal(bundle.score(rows), bundle.score(changed))
    body["feature_names"] = list(FEATURE_NAMES[1 : old_width + 1])
    (folder / registry.MANIFEST).write_text(json.dumps(body))
    with pytest.raises(BundleError, match="expects features"):
        registry.load(tmp_path, manifest.version)


def test_versions_published_within_one_second_list_in_publish_order(
    models: TrainedModels, tmp_path: Path
) -> None:
    """Version names carry the second and a random suffix: the listing orders by when
    each was published, never by the suffix."""
    published: list[str] = []
    for _ in range(6):
        published.append(_publish(models, tmp_path, published[-1] if published else None).version)
    assert [m.version for m in registry.list_versions(tmp_path)] == published
