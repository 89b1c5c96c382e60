import numpy as np

from retrain.index import build_index


def test_flat_below_the_threshold_and_hnsw_above_it() -> None:
    vectors = np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32)
    flat, flat_params = build_index(vectors, hnsw_threshold=1000)
    hnsw, hnsw_params = build_index(vectors, hnsw_threshold=100)
    assert flat_params["kind"] == "flat" and hnsw_params["kind"] == "hnsw"
    assert hnsw_params["M"] > 0 and hnsw_params["ef_search"] >= 100
    queries = vectors[:20]
    _, exact = flat.search(queries, 10)
    _, approximate = hnsw.search(queries, 10)
    assert np.array_equal(exact[:, 0], np.argmax(queries @ vectors.T, axis=1))
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert recall >= 0.9
