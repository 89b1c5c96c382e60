"""Bundles that pass their checksums but cannot be opened, made from a good published
one: what a half-copied volume, a hand edit or a hostile registry writer leaves behind.

Each maker edits one version in place and rewrites the manifest's sha256 and size of
every file it touched, so verification by checksum alone would let it through.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamrec import registry


def _manifest(folder: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((folder / registry.MANIFEST).read_text())
    return body


def _write_manifest(folder: Path, body: dict[str, Any]) -> None:
    (folder / registry.MANIFEST).write_text(json.dumps(body))


def _rehash(folder: Path, name: str) -> None:
    """Make the manifest agree with whatever `name` now holds (through a symlink too)."""
    data = (folder / name).read_bytes()
    body = _manifest(folder)
    body["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_manifest(folder, body)


def truncated_onnx(folder: Path) -> None:
    path = folder / "ranker.onnx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _rehash(folder, "ranker.onnx")


def symlink_to_a_text_file(folder: Path) -> None:
    notes = folder.parent / f".notes-{folder.name}.txt"  # in the registry, not the bundle
    notes.write_text("not a model\n")
    os.remove(folder / "ranker.onnx")
    os.symlink(notes, folder / "ranker.onnx")
    _rehash(folder, "ranker.onnx")


def symlink_to_a_model_outside(folder: Path) -> None:
    """A real encoder, but a copy outside the bundle folder reached through a symlink."""
    outside = folder.parent / f".encoder-{folder.name}.onnx"
    outside.write_bytes((folder / "user_encoder.onnx").read_bytes())
    os.remove(folder / "user_encoder.onnx")
    os.symlink(outside, folder / "user_encoder.onnx")


def manifest_without_max_len(folder: Path) -> None:
    body = _manifest(folder)
    del body["encoder"]["max_len"]
    _write_manifest(folder, body)


def manifest_with_mistyped_max_len(folder: Path) -> None:
    body = _manifest(folder)
    body["encoder"]["max_len"] = "twenty"
    _write_manifest(folder, body)


def files_entry_not_an_object(folder: Path) -> None:
    body = _manifest(folder)
    entry = body["files"]["vocab.json"]
    body["files"]["vocab.json"] = f"sha256:{entry['sha256']}"
    _write_manifest(folder, body)


def vocabulary_not_an_object(folder: Path) -> None:
    (folder / "vocab.json").write_text(json.dumps(["a", "b"]))
    _rehash(folder, "vocab.json")


def ranker_section_mistyped(folder: Path) -> None:
    body = _manifest(folder)
    body["ranker"]["candidates"] = "many"
    _write_manifest(folder, body)


BAD_BUNDLES: dict[str, Callable[[Path], None]] = {
    "truncated_onnx": truncated_onnx,
    "symlink_to_a_text_file": symlink_to_a_text_file,
    "symlink_to_a_model_outside": symlink_to_a_model_outside,
    "manifest_without_max_len": manifest_without_max_len,
    "manifest_with_mistyped_max_len": manifest_with_mistyped_max_len,
    "files_entry_not_an_object": files_entry_not_an_object,
    "vocabulary_not_an_object": vocabulary_not_an_object,
    "ranker_section_mistyped": ranker_section_mistyped,
}


def spoil(root: Path, version: str, kind: str) -> None:
    """Turn the published `version` into the bad bundle called `kind`."""
    BAD_BUNDLES[kind](root / version)
