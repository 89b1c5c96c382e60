"""The model registry: versioned bundles in a folder and the pointer to the current one.

    <registry>/<version>/manifest.json       what the bundle is and how to load it
    <registry>/<version>/user_encoder.onnx   item ids, event types, mask -> user vector
    <registry>/<version>/ranker.onnx         feature rows -> scores
    <registry>/<version>/items.faiss         item vectors, inner-product index
    <registry>/<version>/vocab.json          item id of every index row
    <registry>/<version>/content_tower.onnx  optional: content tokens -> new item's vector
    <registry>/<version>/LINEAGE.jsonl       what became of it: experiments (streamrec/lineage.py)
    <registry>/CURRENT                       {"version": ...}, replaced atomically
    <registry>/EXPERIMENT                    the running experiment (streamrec/experiments.py)
    <registry>/experiments.jsonl             experiments started, stopped, promoted

Loading reads every file once, through the version folder's descriptor and never
through a symlink, checks its sha256 and the manifest's shape, opens the models
from those same bytes, then runs a smoke inference. Any failure is a BundleError.
CURRENT only moves to a version that opened. Nothing here unpickles: ONNX, FAISS,
JSON and .npy without pickles.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from streamrec.content import CONTENT_VERSION
from streamrec.errors import BundleError, ChecksumMismatch
from streamrec.features import (
    FEATURE_NAMES,
    FEATURE_SCHEMA_VERSION,
    READABLE_FEATURE_SCHEMAS,
    UserState,
    popularity_rows,
    ranking_features,
)

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
EXPERIMENT = "EXPERIMENT"
EXPERIMENT_LOG = "experiments.jsonl"
REQUIRED_FILES = ("user_encoder.onnx", "ranker.onnx", "items.faiss", "vocab.json")
# Optional: content tokens -> a new item's vector (a bundle trained with a content tower).
CONTENT_TOWER_FILE = "content_tower.onnx"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_OBJECT_FIELDS = ("files", "encoder", "ranker", "index", "data_window", "metrics", "training")
# A mounted volume's root may hold this; it is not a bundle and not worth a warning.
_NOT_VERSIONS = {CURRENT, EXPERIMENT, EXPERIMENT_LOG, "lost+found"}


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

    @property
    def category_candidates(self) -> int:
        """How many of the most popular items of the latest item's categories join
        the candidates, as in training; 0: trained without a catalogue, so serving
        computes no category column either."""
        return int(self.ranker.get("category_candidates", 0))

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
        problem = _manifest_problem(body)
        if problem:
            raise BundleError(f"{where}: manifest {problem}")
        names = {f for f in cls.__dataclass_fields__}
        body = {k: v for k, v in body.items() if k in names}
        body["feature_names"] = tuple(body.get("feature_names", ()))
        return cls(**body)


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _manifest_problem(body: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's shape, or None. Every field a loader or a
    request reads is checked here, so a bad one is refused at load, not at request."""
    missing = {"version", "created_at", "files", "encoder", "ranker", "index"} - set(body)
    if missing:
        return f"is missing {sorted(missing)}"
    for key in ("version", "created_at"):
        if not isinstance(body[key], str):
            return f"{key} must be a string, got {_shown(body[key])}"
    if body.get("parent") is not None and not isinstance(body["parent"], str):
        return f"parent must be a string or null, got {_shown(body['parent'])}"
    for key in _OBJECT_FIELDS:
        if key in body and not isinstance(body[key], dict):
            return f"{key} must be an object, got {_shown(body[key])}"
    for name, entry in body["files"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return f"files[{name!r}] must be an object with a sha256 string, got {_shown(entry)}"
        if "bytes" in entry and not _is_count(entry["bytes"], 0):
            return f"files[{name!r}].bytes must be a non-negative integer, got {_shown(entry)}"
    for key in ("dim", "max_len"):
        if key not in body["encoder"]:
            return f"encoder.{key} is missing (a positive integer)"
        if not _is_count(body["encoder"][key], 1):
            return f"encoder.{key} must be a positive integer, got {_shown(body['encoder'][key])}"
    plan = body.get("training", {}).get("plan") or {}
    if not isinstance(plan, dict):
        return f"training.plan must be an object, got {_shown(plan)}"
    counts = [
        ("ranker.candidates", body["ranker"].get("candidates")),
        ("training.plan.candidates", plan.get("candidates")),
        ("ranker.recent_candidates", body["ranker"].get("recent_candidates")),
        ("ranker.covis_candidates", body["ranker"].get("covis_candidates")),
        ("feature_schema_version", body.get("feature_schema_version")),
        ("bundle_format", body.get("bundle_format")),
    ]
    for key, value in counts:
        if value is not None and not _is_count(value, 0):
            return f"{key} must be a non-negative integer, got {_shown(value)}"
    names = body.get("feature_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return f"feature_names must be a list of strings, got {_shown(names)}"
    return None


class _Folder:
    """One version's folder, opened once. Its files are read through this descriptor
    with O_NOFOLLOW, so a symlink is refused and nothing outside the folder is read;
    a file is read whole, and what was hashed is what gets opened."""

    def __init__(self, root: Path, version: str) -> None:
        self.version = _check_name(version, "a version")
        path = root / version
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except FileNotFoundError:
            raise BundleError(
                f"no bundle {version!r} in {root} (expected a folder {path})"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                reason = "a symlink; a version must be a folder inside the registry"
            elif exc.errno == errno.ENOTDIR:
                reason = "not a folder, so not a version"
            else:
                reason = f"unreadable: {exc.strerror}"
            raise BundleError(f"{path} is {reason}") from None

    def __enter__(self) -> _Folder:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        os.close(self.fd)

    def read(self, name: str, missing: str, size: int | None = None) -> bytes:
        """The whole of one regular file of the folder; `missing` says what its absence
        means. A file that is not `size` bytes long is refused before it is read."""
        where = f"bundle {self.version}: {_check_name(name, 'a bundle file name')}"
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self.fd)
        except FileNotFoundError:
            raise BundleError(f"{where} {missing}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BundleError(
                    f"{where} is a symlink; bundle files must be regular files in the bundle folder"
                ) from None
            raise BundleError(f"{where} cannot be read: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            found = os.fstat(handle.fileno())
            if not stat.S_ISREG(found.st_mode):
                raise BundleError(f"{where} is not a regular file")
            if size is not None and found.st_size != size:
                raise ChecksumMismatch(
                    f"{where} has {found.st_size} bytes, manifest expects {size}"
                )
            try:
                return handle.read()
            except OSError as exc:
                raise BundleError(f"{where} cannot be read: {exc.strerror}") from None


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


def fsync_dir(path: Path) -> None:
    """fsync a folder: a rename or a link in it survives a crash."""
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
    fsync_dir(path.parent)


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
    feature_columns: int = len(FEATURE_NAMES),
) -> Manifest:
    """Move the files in `staged` into a new version with a manifest; optionally
    point CURRENT at it. The version directory appears in one rename.
    `feature_columns`: how many of the first FEATURE_NAMES the ranker reads (a
    readable schema's width)."""
    schemas = {width: schema for schema, width in READABLE_FEATURE_SCHEMAS.items()}
    if feature_columns not in schemas:
        raise BundleError(f"a ranker of {feature_columns} columns matches no feature schema")
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
        # To the microsecond: versions published within one second list in order.
        created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        data_window=dict(data_window),
        metrics=dict(metrics),
        encoder=dict(encoder),
        ranker=dict(ranker),
        index=dict(index),
        files=files,
        training=dict(training or {}),
        feature_schema_version=schemas[feature_columns],
        feature_names=FEATURE_NAMES[:feature_columns],
    )
    building = root / f".building-{version}"
    shutil.copytree(staged, building)
    _write_atomically(building / MANIFEST, manifest.to_json())
    for name in names:
        with (building / name).open("rb") as handle:
            os.fsync(handle.fileno())
    os.replace(building, root / version)
    fsync_dir(root)
    if make_current:
        set_current(root, version)
    return manifest


def read_manifest(root: Path, version: str) -> Manifest:
    with _Folder(root, version) as folder:
        return _manifest_in(folder, root)


def _manifest_in(folder: _Folder, root: Path) -> Manifest:
    where = str(root / folder.version / MANIFEST)
    data = folder.read(MANIFEST, f"is missing (expected {where})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{where}: manifest is not UTF-8: {exc}") from None
    manifest = Manifest.from_json(text, where)
    if manifest.version != folder.version:
        raise BundleError(
            f"{where}: manifest says version {manifest.version!r}, folder is {folder.version!r}"
        )
    return manifest


@dataclass(frozen=True)
class Listing:
    versions: list[Manifest]  # every readable bundle, oldest first
    unreadable: dict[str, str]  # entry name -> why it is not a readable bundle


def list_registry(root: Path) -> Listing:
    """What the registry holds; one bad folder is listed with its reason, not raised.
    Hidden entries are publishes and pointer writes under way, and are skipped."""
    if not root.is_dir():
        return Listing([], {})
    try:
        names = sorted(child.name for child in root.iterdir())
    except OSError as exc:
        raise BundleError(f"cannot list the registry {root}: {exc}") from exc
    manifests, unreadable = [], {}
    for name in names:
        if name.startswith(".") or name in _NOT_VERSIONS:
            continue
        try:
            manifests.append(read_manifest(root, name))
        except BundleError as exc:
            unreadable[name] = str(exc)
    return Listing(sorted(manifests, key=lambda m: (m.created_at, m.version)), unreadable)


def list_versions(root: Path) -> list[Manifest]:
    """Every readable bundle, oldest first."""
    return list_registry(root).versions


def verify(root: Path, version: str) -> Manifest:
    """Checksums and compatibility; raises BundleError (ChecksumMismatch) when refused."""
    return read_verified(root, version, keep=())[0]


def read_verified(
    root: Path, version: str, keep: tuple[str, ...]
) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest, and the bytes of the files in `keep`: each listed file read once,
    through the folder's descriptor, and checked against its sha256. Whoever opens a
    bundle file opens these bytes, never the path again."""
    with _Folder(root, version) as folder:
        manifest = _manifest_in(folder, root)
        _check_compatible(manifest)
        kept = {}
        for name, entry in manifest.files.items():
            data = folder.read(name, "is listed in the manifest but missing", entry.get("bytes"))
            actual = hashlib.sha256(data).hexdigest()
            if actual != entry["sha256"]:
                raise ChecksumMismatch(
                    f"bundle {version}: {name} has sha256 {actual[:16]}… ({len(data)} bytes), "
                    f"manifest expects {entry['sha256'][:16]}… ({entry.get('bytes')} bytes)"
                )
            if name in keep:
                kept[name] = data
    return manifest, kept


def refusal_reason(error: BaseException | str) -> str:
    """Why a bundle was refused, on one line: for a log, /model and a terminal."""
    return " ".join(str(error).split())


def _check_compatible(manifest: Manifest) -> None:
    version = manifest.version
    if manifest.bundle_format != BUNDLE_FORMAT:
        raise BundleError(
            f"bundle {version} has format {manifest.bundle_format}; "
            f"this build reads {BUNDLE_FORMAT}"
        )
    schema = manifest.feature_schema_version
    if schema not in READABLE_FEATURE_SCHEMAS:
        raise BundleError(
            f"bundle {version} was trained on feature schema {schema}; "
            f"this build computes schemas {sorted(READABLE_FEATURE_SCHEMAS)}"
        )
    names = tuple(manifest.feature_names)
    if names != FEATURE_NAMES[: READABLE_FEATURE_SCHEMAS[schema]]:
        raise BundleError(f"bundle {version} expects features {list(names)}")
    missing = set(REQUIRED_FILES) - set(manifest.files)
    if missing:
        raise BundleError(f"bundle {version}: manifest lists no {sorted(missing)}")


def current_version(root: Path) -> str | None:
    path = root / CURRENT
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str):
        raise BundleError(f"{path}: expected {{'version': str}}, got {_shown(body)}")
    return _check_name(version, "the current version")


def point_at(bundle: LoadedBundle) -> None:
    """Point CURRENT at a version already opened, so verified and smoke-tested."""
    body = {"version": bundle.version, "since": datetime.now(UTC).isoformat(timespec="seconds")}
    _write_atomically(bundle.root / CURRENT, json.dumps(body))


def set_current(root: Path, version: str) -> None:
    """Point CURRENT at `version` once it has opened and passed its smoke inference:
    the pointer never names a version this build cannot serve."""
    point_at(load(root, version))


def rollback_target(root: Path, version: str | None = None) -> str:
    """`version`, or else the parent of the version CURRENT names."""
    if version is None:
        current = current_version(root)
        if current is None:
            raise BundleError(f"{root} has no current version to roll back from")
        version = read_manifest(root, current).parent
        if version is None:
            raise BundleError(f"current version {current} has no parent to roll back to")
    path = root / _check_name(version, "a version")
    if not path.is_dir():  # CURRENT itself, a stray file, a typo: no bundle to refuse
        raise BundleError(f"no bundle {version!r} in {root} (expected a folder {path})")
    return version


def rollback(root: Path, version: str | None = None) -> str:
    """Open `version` (default: the current one's parent), then point CURRENT at it.
    A target that does not open is refused and CURRENT stays where it was."""
    target = rollback_target(root, version)
    point_at(load(root, target))
    return target


class LoadedBundle:
    """One verified version, opened for inference: ONNX sessions, FAISS index, vocabulary."""

    def __init__(self, root: Path, version: str) -> None:
        self.root = root
        self.version = version
        self.manifest, files = read_verified(
            root, version, keep=(*REQUIRED_FILES, CONTENT_TOWER_FILE)
        )
        self.encoder = self._session("user_encoder.onnx", files["user_encoder.onnx"])
        self.ranker = self._session("ranker.onnx", files["ranker.onnx"])
        tower = self.manifest.encoder.get("content_tower")
        # Only a tower whose tokens this build makes the same way is used.
        self.content_tower: Any = None
        if (
            isinstance(tower, dict)
            and tower.get("content_version") == CONTENT_VERSION
            and CONTENT_TOWER_FILE in files
        ):
            self.content_tower = self._session(CONTENT_TOWER_FILE, files[CONTENT_TOWER_FILE])
        self.index = self._index(files["items.faiss"])
        self.item_ids: list[str] = self._vocabulary(files["vocab.json"])
        self.rows = {item_id: row for row, item_id in enumerate(self.item_ids, start=1)}
        self.max_len = int(self.manifest.encoder["max_len"])
        self._smoke_test()

    def _session(self, name: str, model: bytes) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        try:
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(
                f"bundle {self.version}: {name} is not an ONNX model this build can run: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _index(self, data: bytes) -> Any:
        import faiss

        try:
            return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise BundleError(
                f"bundle {self.version}: items.faiss is not a FAISS index: {exc}"
            ) from exc

    def _vocabulary(self, data: bytes) -> list[str]:
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise BundleError(f"bundle {self.version}: vocab.json is not JSON: {exc}") from None
        item_ids = body.get("item_ids") if isinstance(body, dict) else None
        if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
            raise BundleError(
                f"bundle {self.version}: vocab.json must be {{'item_ids': [str, ...]}}, "
                f"got {_shown(body)}"
            )
        return item_ids

    def user_vectors(
        self, item_ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """(batch, dim) from left-padded int64 item rows, int64 type ids, float32 mask."""
        outputs = self.encoder.run(None, {"item_ids": item_ids, "type_ids": type_ids, "mask": mask})
        return np.asarray(outputs[0], dtype=np.float32)

    def content_vectors(self, tokens: np.ndarray) -> np.ndarray:
        """(n, dim) index-space vectors of items from their content tokens alone
        (streamrec.content.content_tokens rows); needs `content_tower`."""
        if self.content_tower is None:
            raise BundleError(f"bundle {self.version} has no content tower this build can use")
        outputs = self.content_tower.run(None, {"tokens": np.asarray(tokens, dtype=np.int64)})
        return np.asarray(outputs[0], dtype=np.float32)

    def search(self, user_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, item rows) of the k best items by inner product; rows are vocab rows."""
        scores, positions = self.index.search(
            np.ascontiguousarray(user_vectors, dtype=np.float32), k
        )
        return scores, positions + 1  # index position i holds vocab row i + 1

    def score(self, features: np.ndarray) -> np.ndarray:
        """The ranker's score per row of `features.ranking_features` (all columns of
        this build; a bundle of an older schema reads the first ones it knows)."""
        columns = np.asarray(features, dtype=np.float32)[:, : len(self.manifest.feature_names)]
        outputs = self.ranker.run(None, {"features": np.ascontiguousarray(columns)})
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
    """Open `version`, or the current one; raises BundleError when refused, whatever
    went wrong: a failure to open a bundle is that bundle's refusal, never a crash."""
    version = version or current_version(root)
    if version is None:
        raise BundleError(f"{root} has no current version; publish or name one")
    try:
        return LoadedBundle(root, version)
    except BundleError:
        raise
    except Exception as exc:  # a case the checks above missed: still a refusal
        raise BundleError(
            f"bundle {version} cannot be opened: {type(exc).__name__}: {exc}"
        ) from exc
