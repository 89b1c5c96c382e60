"""ONNX export of the user encoder and the ranker, and the parity check that
onnxruntime answers as torch does."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from retrain.encoder import ContentTower, SequenceEncoder
from retrain.ranker import Ranker

OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_encoder(encoder: SequenceEncoder, path: Path) -> None:
    """The user encoder as serving runs it: with a content tower folded into the item
    table (`SequenceEncoder.folded`), so a request pays nothing for the tower."""
    encoder = encoder.folded() if encoder.content_emb is not None else encoder.eval()
    example = (
        torch.ones(2, 3, dtype=torch.long),
        torch.ones(2, 3, dtype=torch.long),
        torch.ones(2, 3, dtype=torch.float32),
    )
    _export(
        encoder,
        example,
        path,
        input_names=["item_ids", "type_ids", "mask"],
        output_names=["user_vector"],
        dynamic_axes={
            "item_ids": {0: "batch", 1: "length"},
            "type_ids": {0: "batch", 1: "length"},
            "mask": {0: "batch", 1: "length"},
            "user_vector": {0: "batch"},
        },
    )


def export_content_tower(encoder: SequenceEncoder, path: Path) -> None:
    """Content tokens (n, slots) -> the vector a new item gets in the index."""
    tower = ContentTower(encoder).eval()
    example = (torch.ones(2, encoder.config.content_slots, dtype=torch.long),)
    _export(
        tower,
        example,
        path,
        input_names=["tokens"],
        output_names=["item_vector"],
        dynamic_axes={"tokens": {0: "items"}, "item_vector": {0: "items"}},
    )


def export_ranker(ranker: Ranker, path: Path) -> None:
    ranker.eval()
    example = (torch.zeros(4, ranker.mean.shape[0], dtype=torch.float32),)
    _export(
        ranker,
        example,
        path,
        input_names=["features"],
        output_names=["score"],
        dynamic_axes={"features": {0: "candidates"}, "score": {0: "candidates"}},
    )


def _export(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    # The TorchScript exporter needs no extra package (the dynamo one needs
    # onnxscript); torch warns that it is the legacy path, which we know, and
    # the parity check below is what tells whether the trace is right.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )


def parity_error(onnx_path: Path, module: torch.nn.Module, inputs: dict[str, np.ndarray]) -> float:
    """Largest |onnxruntime - torch| over the outputs for these inputs, relative to the
    outputs' own scale (their largest magnitude, at least 1): float32 kernels that sum
    in another order differ by a few units in the last place of what they compute, so
    a fixed absolute bound would refuse a healthy model whose scores are just larger."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, inputs)[0]
    module.eval()
    with torch.no_grad():
        torch_out = module(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    scale = max(1.0, float(np.abs(torch_out).max()))
    return float(np.abs(onnx_out - torch_out).max()) / scale
