"""A trained model's vocabulary grown to a large catalogue with synthetic items, for
`streamrec bench catalogue`: each synthetic item is a variant of a real one (its id
embedding plus Gaussian noise scaled to the real embeddings' spread, its content
tokens copied), so the grown vectors keep the trained ones' regions and go through
the same publish path (content added, normalised, indexed) as real ones. The noise
is calibrated so that a synthetic item is, on average, as near its nearest trained
item as a trained item is to its nearest other trained item: denser than that, the
synthetic items would be near-duplicates (tight clumps a graph index finds easily or
badly for reasons no real catalogue has); sparser, noise."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from retrain.encoder import grow_items
from retrain.training import TrainedModels

SYNTHETIC_PREFIX = "syn-"
# The noise scale is searched in [0, MAX_NOISE_SCALE] (in units of the trained id
# embeddings' standard deviation per dimension) on this many synthetic items.
MAX_NOISE_SCALE = 4.0
CALIBRATION_ITEMS = 2000
CALIBRATION_STEPS = 8


def calibrated_noise_scale(models: TrainedModels) -> float:
    """The noise scale (bisection) at which synthetic items are as near their nearest
    trained item, on average, as trained items are to their nearest other one."""
    real = len(models.vocab)
    low, high = 0.0, MAX_NOISE_SCALE
    for _ in range(CALIBRATION_STEPS):
        scale = (low + high) / 2
        sample = grow_catalogue(models, real + CALIBRATION_ITEMS, scale)
        figures = spread_figures(index_vectors(sample), real)
        too_near = (
            figures["mean_cosine_synthetic_to_nearest_real"]
            > figures["mean_cosine_real_to_nearest_real"]
        )
        low, high = (scale, high) if too_near else (low, scale)
    return round((low + high) / 2, 3)


def index_vectors(models: TrainedModels) -> np.ndarray:
    """The vectors `retrain/publish.py` indexes: index position i is vocabulary row i + 1."""
    with torch.no_grad():
        vectors: np.ndarray = models.encoder.eval().item_vectors().numpy()[1:]
    return vectors


def grow_catalogue(
    models: TrainedModels, n_items: int, noise_scale: float, seed: int = 0
) -> TrainedModels:
    """`models` with a vocabulary of `n_items` items: the trained ones first (rows and
    vectors unchanged), then synthetic items `syn-0000000`, ... The ranker and every
    other trained part are shared with `models`."""
    real = len(models.vocab)
    extra = n_items - real
    if extra < 0:
        raise ValueError(f"the vocabulary holds {real} items already; asked for {n_items}")
    vocab = models.vocab.grow(f"{SYNTHETIC_PREFIX}{n:07d}" for n in range(extra))
    encoder = models.encoder
    config = encoder.config
    grown = grow_items(encoder, vocab.n_rows, seed, config.content_buckets, config.content_slots)
    rng = np.random.default_rng(seed)
    sources = torch.from_numpy(rng.integers(1, real + 1, extra))  # real rows, 0 is padding
    with torch.no_grad():
        table = grown.item_emb.weight
        spread = table[1 : real + 1].std(dim=0)
        noise = torch.from_numpy(rng.standard_normal((extra, config.dim), dtype=np.float32))
        table[real + 1 :] = table[sources] + noise * spread * noise_scale
        grown.item_content[real + 1 :] = grown.item_content[sources]
    return replace(models, vocab=vocab, encoder=grown.eval())


def spread_figures(item_vectors: np.ndarray, real: int, sample: int = 2000) -> dict[str, float]:
    """How the grown vectors (rows: index positions, the `real` trained items first)
    compare with the real ones: the mean cosine of a sample of synthetic items with
    their nearest real item, and of real items with their nearest other real item."""
    rng = np.random.default_rng(0)
    real_vectors = _unit(item_vectors[:real])
    figures: dict[str, float] = {}
    for name, rows in (
        ("real_to_nearest_real", rng.choice(real, min(sample, real), replace=False)),
        ("synthetic_to_nearest_real", real + rng.choice(len(item_vectors) - real, sample)),
    ):
        if name.startswith("synthetic") and len(item_vectors) <= real:
            continue
        cosines = _unit(item_vectors[rows]) @ real_vectors.T
        if name.startswith("real"):
            cosines[np.arange(len(rows)), rows] = -np.inf  # not itself
        figures[f"mean_cosine_{name}"] = round(float(cosines.max(axis=1).mean()), 3)
    return figures


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
