"""Every bundle the registry cannot open is a `BundleError`, whatever went wrong inside;
files are read once, from inside the bundle folder; a pointer is moved only to a
version that opened."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bench.scenarios.models import publish as _publish
from bench.scenarios.models import serving_models
from retrain.training import TrainedModels
from streamrec import registry
from streamrec.errors import BundleError, ChecksumMismatch
from streamrec.features import FEATURE_NAMES
from tests.streamrec.bad_bundles import BAD_BUNDLES, spoil


@pytest.fixture(scope="module")
def models() -> TrainedModels:
    return serving_models()


@pytest.mark.parametrize("kind", sorted(BAD_BUNDLES))
def test_a_bundle_that_cannot_be_opened_is_a_bundle_error(
    models: TrainedModels, tmp_path: Path, kind: str
) -> None:
    version = _publish(models, tmp_path).version
    spoil(tmp_path, version, kind)
    with pytest.raises(BundleError, match=version):
        registry.load(tmp_path, version)


def test_a_symlinked_version_folder_is_refused(models: TrainedModels, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    version = _publish(models, root).version
    os.rename(root / version, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", root / version)
    with pytest.raises(BundleError, match="symlink"):
        registry.load(root, version)


def test_a_file_that_is_not_regular_is_refused(models: TrainedModels, tmp_path: Path) -> None:
    version = _publish(models, tmp_path).version
    os.remove(tmp_path / version / "ranker.onnx")
    os.mkfifo(tmp_path / version / "ranker.onnx")  # opening it to read would block forever
    with pytest.raises(BundleError, match="regular file"):
        registry.load(tmp_path, version)


def _other_ranker(path: Path) -> bytes:
    """The same ranker with one weight changed: valid, smoke-testable, and not the one
    the manifest's sha256 names."""
    model = onnx.load_from_string(path.read_bytes())
    weights = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(weights).copy()
    values.flat[0] += 10.0
    weights.CopyFrom(numpy_helper.from_array(values, weights.name))
    serialized: bytes = model.SerializeToString()
    return serialized


def test_the_ranker_opened_is_the_one_whose_checksum_was_verified(
    models: TrainedModels, tmp_path: Path
) -> None:
    """A writer flips ranker.onnx between the published bytes and another valid ranker
    while versions load. Each load must either refuse the other bytes by checksum or
    serve exactly the published ranker: never verify one file and open another."""
    version = _publish(models, tmp_path).version
    path = tmp_path / version / "ranker.onnx"
    published, other = path.read_bytes(), _other_ranker(path)
    features = np.random.default_rng(0).random((4, len(FEATURE_NAMES)), np.float32)
    expected = registry.load(tmp_path, version).score(features)
    stop = threading.Event()

    def flip() -> None:
        staged = path.with_name(".ranker.flip")
        while not stop.is_set():
            for data in (other, published):
                staged.write_bytes(data)
                os.replace(staged, path)

    flipper = threading.Thread(target=flip)
    flipper.start()
    outcomes = {"served": 0, "refused": 0, "wrong_ranker": 0}
    try:
        for _ in range(60):
            try:
                bundle = registry.load(tmp_path, version)
            except BundleError:
                outcomes["refused"] += 1
                continue
            same = np.allclose(bundle.score(features), expected, atol=1e-6)
            outcomes["served" if same else "wrong_ranker"] += 1
    finally:
        stop.set()
        flipper.join()
    assert outcomes["wrong_ranker"] == 0, outcomes
    assert outcomes["refused"] > 0, outcomes  # the flipping was seen at all


def test_set_current_and_rollback_open_the_target_before_moving_the_pointer(
    models: TrainedModels, tmp_path: Path
) -> None:
    first = _publish(models, tmp_path).version
    second = _publish(models, tmp_path, parent=first).version
    spoil(tmp_path, first, "manifest_without_max_len")
    with pytest.raises(BundleError, match="max_len"):
        registry.rollback(tmp_path)
    with pytest.raises(BundleError, match="max_len"):
        registry.set_current(tmp_path, first)
    assert registry.current_version(tmp_path) == second
    for name in ("CURRENT", "v-none", ".hidden"):
        with pytest.raises(BundleError):
            registry.rollback(tmp_path, name)
    assert registry.current_version(tmp_path) == second


def test_listing_survives_bad_folders(models: TrainedModels, tmp_path: Path) -> None:
    good = _publish(models, tmp_path).version
    bad = _publish(models, tmp_path, parent=good, make_current=False).version
    (tmp_path / bad / registry.MANIFEST).write_text(json.dumps({"version": bad, "files": []}))
    (tmp_path / "v-empty").mkdir()
    (tmp_path / "not a version").mkdir()
    (tmp_path / ".building-v-x").mkdir()  # a publish under way: not listed
    listing = registry.list_registry(tmp_path)
    assert [m.version for m in listing.versions] == [good]
    assert set(listing.unreadable) == {bad, "v-empty", "not a version"}
    assert "missing" in listing.unreadable[bad]
    assert "manifest.json" in listing.unreadable["v-empty"]
    assert [m.version for m in registry.list_versions(tmp_path)] == [good]


def test_a_file_of_the_wrong_size_is_refused_before_it_is_read(
    models: TrainedModels, tmp_path: Path
) -> None:
    version = _publish(models, tmp_path).version
    with (tmp_path / version / "items.faiss").open("ab") as handle:
        handle.write(b"\0" * 4096)
    with pytest.raises(ChecksumMismatch, match=r"items\.faiss has \d+ bytes, manifest expects"):
        registry.verify(tmp_path, version)
