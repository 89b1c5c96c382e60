"""Turning trained models into a registry bundle, and reading a bundle's torch
weights back for a warm start (`weights_only=True`: tensors, never pickles)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrain.batches import left_pad
from retrain.encoder import ContentTower, EncoderConfig, SequenceEncoder
from retrain.export import (
    PARITY_TOLERANCE,
    export_content_tower,
    export_encoder,
    export_ranker,
    parity_error,
)
from retrain.index import build_index, write_index
from retrain.ranker import Ranker, RankerConfig
from retrain.training import TrainedModels, TrainPlan
from retrain.vocab import ItemVocab
from streamrec import registry
from streamrec.content import CONTENT_VERSION
from streamrec.errors import BundleError
from streamrec.registry import CONTENT_TOWER_FILE


def stage_bundle(models: TrainedModels, folder: Path, hnsw_threshold: int) -> dict[str, Any]:
    """Write every bundle file into `folder`; returns the manifest sections."""
    export_encoder(models.encoder, folder / "user_encoder.onnx")
    export_ranker(models.ranker, folder / "ranker.onnx")
    tower = models.encoder.content_emb is not None
    if tower:
        export_content_tower(models.encoder, folder / CONTENT_TOWER_FILE)
    with torch.no_grad():
        item_vectors = models.encoder.eval().item_vectors().numpy()[1:]
    index, index_params = build_index(item_vectors, hnsw_threshold)
    write_index(index, folder / "items.faiss")
    models.vocab.save(folder / "vocab.json")
    torch.save(models.encoder.state_dict(), folder / "encoder.pt")
    torch.save(models.ranker.state_dict(), folder / "ranker.pt")
    parity = check_parity(models, folder)
    return {
        "encoder": {
            **models.encoder.config.to_dict(),
            "inputs": ["item_ids", "type_ids", "mask"],
            "output": "user_vector",
            "padding": "left",
            "onnx_parity_error": parity["encoder"],
            # A new item's vector from its content (streamrec/content.py), or none.
            "content_tower": {
                "file": CONTENT_TOWER_FILE,
                "content_version": CONTENT_VERSION,
                "buckets": models.encoder.config.content_buckets,
                "slots": models.encoder.config.content_slots,
                "onnx_parity_error": parity["content_tower"],
            }
            if tower
            else None,
        },
        "ranker": {
            "n_features": int(models.ranker.mean.shape[0]),
            "inputs": ["features"],
            "output": "score",
            "onnx_parity_error": parity["ranker"],
        },
        "index": index_params,
    }


def check_parity(models: TrainedModels, folder: Path) -> dict[str, float]:
    """onnxruntime vs torch on a few real rows; refuses to publish beyond tolerance."""
    rows = [np.arange(1, 1 + min(n, len(models.vocab)), dtype=np.int64) for n in (1, 3, 7)]
    types = [np.ones(len(r), dtype=np.int64) for r in rows]
    item_ids, type_ids, mask = left_pad(rows, types, models.encoder.config.max_len)
    encoder_diff = parity_error(
        folder / "user_encoder.onnx",
        models.encoder,
        {"item_ids": item_ids.numpy(), "type_ids": type_ids.numpy(), "mask": mask.numpy()},
    )
    features = (
        np.random.default_rng(0)
        .normal(size=(16, int(models.ranker.mean.shape[0])))
        .astype(np.float32)
    )
    ranker_diff = parity_error(folder / "ranker.onnx", models.ranker, {"features": features})
    tower_diff = 0.0
    if models.encoder.content_emb is not None:
        tokens = models.encoder.item_content[: min(64, models.encoder.config.n_items)].numpy()
        tower = ContentTower(models.encoder)
        tower_diff = parity_error(folder / CONTENT_TOWER_FILE, tower, {"tokens": tokens})
    worst = max(encoder_diff, ranker_diff, tower_diff)
    if not worst <= PARITY_TOLERANCE:  # NaN included: a model that outputs NaN is no model
        raise BundleError(
            f"ONNX output differs from torch by {worst:.2e} of its scale; "
            f"tolerance {PARITY_TOLERANCE}"
        )
    return {"encoder": encoder_diff, "ranker": ranker_diff, "content_tower": tower_diff}


def publish_models(
    models: TrainedModels,
    root: Path,
    plan: TrainPlan,
    source: dict[str, Any],
    parent: str | None,
    hnsw_threshold: int,
    make_current: bool = True,
) -> registry.Manifest:
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    except OSError as exc:
        raise BundleError(f"cannot write the registry at {root}: {exc}") from exc
    try:
        sections = stage_bundle(models, staging, hnsw_threshold)
        return registry.publish(
            root,
            staging,
            parent=parent,
            data_window={**source, **models.data_window},
            metrics={"validation": models.validation},
            encoder=sections["encoder"],
            ranker={
                **sections["ranker"],
                "candidates": plan.candidates,
                "recent_candidates": plan.recent_candidates,
                "covis_candidates": plan.covis_candidates,
                "trending_candidates": plan.trending_candidates,
                # Trained without a catalogue: serving leaves the category columns at
                # 0 as training saw them, whatever the catalogue holds by then.
                "category_candidates": (
                    plan.category_candidates if models.data_window.get("items_with_category") else 0
                ),
            },
            index=sections["index"],
            feature_columns=models.ranker.n_features,
            training={
                "plan": plan.to_dict(),
                "train_seconds": round(models.seconds, 1),
                "encoder_seconds": round(models.encoder_log.seconds, 1),
                "encoder_processes": models.encoder_processes,
                "encoder_epochs": models.encoder_log.epoch_metrics,
                "ranker_losses": models.ranker_losses,
            },
            make_current=make_current,
        )
    except OSError as exc:
        # Staged files are removed below and the version folder appears in one
        # rename, so nothing half-written is left and CURRENT is unchanged.
        raise BundleError(f"publishing into the registry at {root} failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_warm_start(root: Path, version: str) -> tuple[ItemVocab, SequenceEncoder]:
    """The vocabulary and encoder of a verified version, to continue training from."""
    manifest = registry.verify(root, version)
    folder = root / version
    if "encoder.pt" not in manifest.files:
        raise BundleError(f"bundle {version} carries no encoder.pt to warm-start from")
    vocab = ItemVocab.load(folder / "vocab.json")
    fields = EncoderConfig.__dataclass_fields__
    config = EncoderConfig(**{k: v for k, v in manifest.encoder.items() if k in fields})
    encoder = SequenceEncoder(config)
    encoder.load_state_dict(torch.load(folder / "encoder.pt", weights_only=True))
    return vocab, encoder


def load_ranker(root: Path, version: str) -> Ranker:
    """A verified version's ranker, to measure it against a new one."""
    manifest = registry.verify(root, version)
    if "ranker.pt" not in manifest.files:
        raise BundleError(f"bundle {version} carries no ranker.pt")
    planned = manifest.training.get("plan", {}).get("ranker", {})
    fields = RankerConfig.__dataclass_fields__
    config = RankerConfig(**{k: v for k, v in planned.items() if k in fields})
    ranker = Ranker(config)
    ranker.load_state_dict(torch.load(root / version / "ranker.pt", weights_only=True))
    ranker.eval()
    return ranker
