"""One padding for training and serving: the latest event of every sequence in the
last column, the oldest cut beyond `max_len`."""

import numpy as np

from retrain.batches import left_pad
from streamrec.user_vectors import encoder_inputs, left_padded


def test_sequences_are_right_aligned_and_cut_from_the_oldest() -> None:
    item_ids, type_ids, mask = left_padded([[1, 2, 3], [7]], [[0, 1, 0], [2]], max_len=2)
    assert item_ids.tolist() == [[2, 3], [0, 7]]
    assert type_ids.tolist() == [[1, 0], [0, 2]]
    assert mask.tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_training_and_serving_pad_alike() -> None:
    rows = [np.array([4, 5, 6]), np.array([9, 8])]
    types = [np.array([0, 0, 1]), np.array([1, 0])]
    trained = [t.numpy() for t in left_pad(rows, types, max_len=10)]
    served = encoder_inputs(
        [list(zip(r.tolist(), k.tolist(), strict=True)) for r, k in zip(rows, types, strict=True)]
    )
    for a, b in zip(trained, served, strict=True):
        np.testing.assert_array_equal(a, b)
