"""Opening a version for serving: item vectors read back from the index are the
trained ones; a bundle that fails verification is refused."""

from __future__ import annotations

import numpy as np
import pytest

from bench.scenarios.models import corrupt
from streamrec.errors import ChecksumMismatch
from streamrec.loaded import open_model
from tests.model_server.conftest import Served


def test_item_vectors_are_the_trained_ones(served: Served) -> None:
    model = open_model(served.root, served.first.version)
    rows = [1, 5, len(served.models.vocab)]
    trained = served.models.encoder.item_vectors().detach().numpy()
    assert model.n_items == len(served.models.vocab)
    assert np.allclose(model.item_vectors(rows), trained[rows], atol=1e-6)


def test_a_tampered_bundle_is_refused(served: Served) -> None:
    corrupt(served.root, served.first.version, "items.faiss")
    with pytest.raises(ChecksumMismatch, match=r"items\.faiss"):
        open_model(served.root, served.first.version)
