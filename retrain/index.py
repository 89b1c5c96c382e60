"""The FAISS index over item vectors: exact (flat) for small catalogues, HNSW
above a size threshold. The kind and parameters go into the manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

HNSW_THRESHOLD = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 256


def build_index(
    item_vectors: np.ndarray, hnsw_threshold: int = HNSW_THRESHOLD
) -> tuple[Any, dict[str, Any]]:
    """Index position i holds vocabulary row i + 1 (row 0, padding, is left out)."""
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    n_items, dim = vectors.shape
    index: Any
    if n_items < hnsw_threshold:
        index = faiss.IndexFlatIP(dim)
        params: dict[str, Any] = {"kind": "flat"}
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        params = {
            "kind": "hnsw",
            "M": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION,
            "ef_search": HNSW_EF_SEARCH,
        }
    started = time.perf_counter()
    index.add(vectors)
    params.update(
        {
            "metric": "inner_product",
            "n_items": n_items,
            "dim": dim,
            "threshold": hnsw_threshold,
            # What a retrain at this size pays for the index (HNSW: minutes at 1M items).
            "build_seconds": round(time.perf_counter() - started, 2),
        }
    )
    return index, params


def write_index(index: Any, path: Path) -> None:
    faiss.write_index(index, str(path))
