"""The model registry: versioned bundles in a folder and the pointer to the current one.

    <registry>/<version>/manifest.json       what the bundle is and how to load it
    <registry>/<version>/user_encoder.onnx   item ids, event types, mask -> user vector
    <registry>/<version>/ranker.onnx         feature rows -> scores
    <registry>/<version>/items.faiss         item vectors, inner-product index
    <registry>/<version>/vocab.json          item id of every index row
    <registry>/CURRENT                       {"version": ...}, replaced atomically

Loading verifies every sha256, checks compatibility, then runs a smoke
inference. Nothing here unpickles: ONNX, FAISS, JSON and .npy without pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.errors import BundleError, ChecksumMismatch
from streamrec.features import (
    FEATURE_NAMES,
    FEATURE_SCHEMA_VERSION,
    UserState,
    popularity_rows,
    ranking_features,
)

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
REQUIRED_FILES = ("user_encoder.onnx", "ranker.onnx", "items.faiss", "vocab.json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Manifest:
    version: str
    parent: str | None
    created_at: str
    data_window: Mapping[str, Any]  # source, format, first/last event time, counts
    metrics: Mapping[str, Any]
    encoder: Mapping[str, Any]  # config (dim, max_len, n_items, ...), input/output names
    ranker: Mapping[str, Any]
    index: Mapping[str, Any]  # kind (flat|hnsw), metric, parameters
    files: Mapping[str, Mapping[str, Any]]  # name -> {"sha256", "bytes"}
    feature_schema_version: int = FEATURE_SCHEMA_VERSION
    feature_names: tuple[str, ...] = FEATURE_NAMES
    bundle_format: int = BUNDLE_FORMAT
    training: Mapping[str, Any] = field(default_factory=dict)

    @property
    def retrieval_candidates(self) -> int | None:
        """How many retrieval candidates the ranker was trained on (its softmax and
        rank features depend on it), when the bundle says."""
        plan = self.training.get("plan") or {}
        found = self.ranker.get("candidates", plan.get("candidates"))
        return int(found) if found else None

    @property
    def recent_candidates(self) -> int:
        """How many of the user's own recent items join the candidates, as in training
        (`features.extra_candidates`); 0 for bundles from before there were any."""
        return int(self.ranker.get("recent_candidates", 0))

    @property
    def covis_candidates(self) -> int:
        """How many co-visitation neighbours join the candidates, as in training."""
        return int(self.ranker.get("covis_candidates", 0))

    @property
    def trending_candidates(self) -> int:
        """How many of the top trending items join the candidates, as in training."""
        return int(self.ranker.get("trending_candidates", 0))

    def to_json(self) -> str:
        body = asdict(self)
        body["feature_names"] = list(self.feature_names)
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise BundleError(f"{where}: manifest is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise BundleError(f"{where}: manifest must be a JSON object")
        names = {f for f in cls.__dataclass_fields__}
        missing = {"version", "created_at", "files", "encoder", "ranker", "index"} - set(body)
        if missing:
            raise BundleError(f"{where}: manifest is missing {sorted(missing)}")
        body = {k: v for k, v in body.items() if k in names}
        body["feature_names"] = tuple(body.get("feature_names", ()))
        return cls(**body)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_version_name(now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    return moment.strftime("v%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise BundleError(f"{what} must match {_NAME.pattern}; got {name!r}")
    return name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    """Write, fsync, rename, fsync the folder: a reader sees old or new, never half."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with temp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def publish(
    root: Path,
    staged: Path,
    *,
    parent: str | None,
    data_window: Mapping[str, Any],
    metrics: Mapping[str, Any],
    encoder: Mapping[str, Any],
    ranker: Mapping[str, Any],
    index: Mapping[str, Any],
    training: Mapping[str, Any] | None = None,
    make_current: bool = True,
    version: str | None = None,
) -> Manifest:
    """Move the files in `staged` into a new version with a manifest; optionally
    point CURRENT at it. The version directory appears in one rename."""
    root.mkdir(parents=True, exist_ok=True)
    version = _check_name(version or new_version_name(), "a version")
    if (root / version).exists():
        raise BundleError(f"version {version} already exists in {root}")
    names = sorted(p.name for p in staged.iterdir() if p.is_file() and p.name != MANIFEST)
    missing = set(REQUIRED_FILES) - set(names)
    if missing:
        raise BundleError(f"{staged}: a bundle needs {sorted(missing)} too")
    files = {
        _check_name(name, "a bundle file name"): {
            "sha256": sha256_of(staged / name),
            "bytes": (staged / name).stat().st_size,
        }
        for name in names
    }
    manifest = Manifest(
        version=version,
        parent=parent,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        data_window=dict(data_window),
        metrics=dict(metrics),
        encoder=dict(encoder),
        ranker=dict(ranker),
        index=dict(index),
        files=files,
        training=dict(training or {}),
    )
    building = root / f".building-{version}"
    shutil.copytree(staged, building)
    _write_atomically(building / MANIFEST, manifest.to_json())
    for name in names:
        with (building / name).open("rb") as handle:
            os.fsync(handle.fileno())
    os.replace(building, root / version)
    _fsync_dir(root)
    if make_current:
        set_current(root, version)
    return manifest


def read_manifest(root: Path, version: str) -> Manifest:
    path = root / _check_name(version, "a version") / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"no bundle {version!r} in {root} (expected {path})") from None
    manifest = Manifest.from_json(text, str(path))
    if manifest.version != version:
        raise BundleError(
            f"{path}: manifest says version {manifest.version!r}, folder is {version!r}"
        )
    return manifest


def list_versions(root: Path) -> list[Manifest]:
    """Every readable bundle, oldest first."""
    if not root.is_dir():
        return []
    manifests = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and _NAME.match(child.name) and (child / MANIFEST).is_file():
            manifests.append(read_manifest(root, child.name))
    return sorted(manifests, key=lambda m: (m.created_at, m.version))


def verify(root: Path, version: str) -> Manifest:
    """Checksums and compatibility; raises BundleError (ChecksumMismatch) when refused."""
    manifest = read_manifest(root, version)
    if manifest.bundle_format != BUNDLE_FORMAT:
        raise BundleError(
            f"bundle {version} has format {manifest.bundle_format}; "
            f"this build reads {BUNDLE_FORMAT}"
        )
    if manifest.feature_schema_version != FEATURE_SCHEMA_VERSION:
        raise BundleError(
            f"bundle {version} was trained on feature schema {manifest.feature_schema_version}; "
            f"this build computes schema {FEATURE_SCHEMA_VERSION}"
        )
    if tuple(manifest.feature_names) != FEATURE_NAMES:
        raise BundleError(f"bundle {version} expects features {list(manifest.feature_names)}")
    missing = set(REQUIRED_FILES) - set(manifest.files)
    if missing:
        raise BundleError(f"bundle {version}: manifest lists no {sorted(missing)}")
    for name, entry in manifest.files.items():
        path = root / version / _check_name(name, "a bundle file name")
        if not path.is_file():
            raise BundleError(f"bundle {version}: {name} is listed in the manifest but missing")
        actual = sha256_of(path)
        if actual != entry.get("sha256"):
            raise ChecksumMismatch(
                f"bundle {version}: {name} has sha256 {actual[:16]}…, manifest expects "
                f"{str(entry.get('sha256'))[:16]}…"
            )
    return manifest


def current_version(root: Path) -> str | None:
    try:
        body = json.loads((root / CURRENT).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise BundleError(f"{root / CURRENT} is not valid JSON: {exc}") from exc
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str):
        raise BundleError(f"{root / CURRENT}: expected {{'version': str}}, got {body!r}")
    return _check_name(version, "the current version")


def set_current(root: Path, version: str) -> None:
    """Point CURRENT at an existing, verified version."""
    verify(root, version)
    body = {"version": version, "since": datetime.now(UTC).isoformat(timespec="seconds")}
    _write_atomically(root / CURRENT, json.dumps(body))


def rollback(root: Path, version: str | None = None) -> str:
    """Point CURRENT at `version`, or else at the current version's parent."""
    if version is None:
        current = current_version(root)
        if current is None:
            raise BundleError(f"{root} has no current version to roll back from")
        version = read_manifest(root, current).parent
        if version is None:
            raise BundleError(f"current version {current} has no parent to roll back to")
    set_current(root, version)
    return version


class LoadedBundle:
    """One verified version, opened for inference: ONNX sessions, FAISS index, vocabulary."""

    def __init__(self, root: Path, version: str) -> None:
        import faiss
        import onnxruntime as ort

        self.manifest = verify(root, version)
        self.version = version
        folder = root / version
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.encoder = ort.InferenceSession(
                str(folder / "user_encoder.onnx"), options, providers=["CPUExecutionProvider"]
            )
            self.ranker = ort.InferenceSession(
                str(folder / "ranker.onnx"), options, providers=["CPUExecutionProvider"]
            )
            self.index = faiss.read_index(str(folder / "items.faiss"))
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))["item_ids"]
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise BundleError(f"bundle {version} could not be opened: {exc}") from exc
        self.item_ids: list[str] = list(vocab)
        self.rows = {item_id: row for row, item_id in enumerate(self.item_ids, start=1)}
        self.max_len = int(self.manifest.encoder["max_len"])
        self._smoke_test()

    def user_vectors(
        self, item_ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """(batch, dim) from left-padded int64 item rows, int64 type ids, float32 mask."""
        outputs = self.encoder.run(None, {"item_ids": item_ids, "type_ids": type_ids, "mask": mask})
        return np.asarray(outputs[0], dtype=np.float32)

    def search(self, user_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, item rows) of the k best items by inner product; rows are vocab rows."""
        scores, positions = self.index.search(
            np.ascontiguousarray(user_vectors, dtype=np.float32), k
        )
        return scores, positions + 1  # index position i holds vocab row i + 1

    def score(self, features: np.ndarray) -> np.ndarray:
        outputs = self.ranker.run(None, {"features": np.asarray(features, dtype=np.float32)})
        return np.asarray(outputs[0], dtype=np.float32).reshape(-1)

    def _smoke_test(self) -> None:
        """One tiny request end to end; a bundle that cannot answer it is refused."""
        if not self.item_ids or self.index.ntotal != len(self.item_ids):
            raise BundleError(
                f"bundle {self.version}: index holds {self.index.ntotal} items, "
                f"vocabulary {len(self.item_ids)}"
            )
        dim = int(self.manifest.encoder["dim"])
        if self.index.d != dim:
            raise BundleError(
                f"bundle {self.version}: the index holds {self.index.d}-dim item vectors, "
                f"the encoder makes {dim}-dim user vectors"
            )
        item_ids = np.array([[0, 1]], dtype=np.int64)
        type_ids = np.array([[0, 1]], dtype=np.int64)
        mask = np.array([[0.0, 1.0]], dtype=np.float32)
        try:
            vector = self.user_vectors(item_ids, type_ids, mask)
            scores, rows = self.search(vector, min(5, len(self.item_ids)))
            candidates = [self.item_ids[r - 1] for r in rows[0] if r > 0]
            features = ranking_features(
                candidates,
                scores[0][: len(candidates)],
                UserState(()),
                popularity_rows(candidates, {}),
                0,
            )
            ranked = self.score(features)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(
                f"bundle {self.version} failed its smoke inference: {type(exc).__name__}: {exc}"
            ) from exc
        if vector.shape != (1, dim) or not np.isfinite(ranked).all():
            raise BundleError(f"bundle {self.version}: smoke inference gave shape {vector.shape}")


def load(root: Path, version: str | None = None) -> LoadedBundle:
    """Open `version`, or the current one; raises BundleError when refused."""
    version = version or current_version(root)
    if version is None:
        raise BundleError(f"{root} has no current version; publish or name one")
    return LoadedBundle(root, version)
