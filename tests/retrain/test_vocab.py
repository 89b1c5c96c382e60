from pathlib import Path

import torch

from retrain.encoder import EncoderConfig, SequenceEncoder, grow_items
from retrain.vocab import ItemVocab


def test_growth_appends_new_ids_and_keeps_old_rows(tmp_path: Path) -> None:
    vocab = ItemVocab.build(["a", "b", "c"])
    grown = vocab.grow(["c", "d", "a", "e"])
    assert [grown.row(i) for i in "abc"] == [vocab.row(i) for i in "abc"] == [1, 2, 3]
    assert grown.row("d") == 4 and grown.row("e") == 5
    assert grown.row("unknown") == 0
    grown.save(tmp_path / "vocab.json")
    assert ItemVocab.load(tmp_path / "vocab.json") == grown


def test_growing_the_encoder_keeps_old_embeddings_and_outputs() -> None:
    torch.manual_seed(0)
    encoder = SequenceEncoder(
        EncoderConfig(n_items=4, dim=8, n_layers=1, n_heads=1, max_len=5)
    ).eval()
    grown = grow_items(encoder, 10).eval()
    assert torch.equal(grown.item_emb.weight[:4], encoder.item_emb.weight)
    assert grown.item_emb.weight.shape == (10, 8)
    items = torch.tensor([[0, 1, 3]])
    types = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    with torch.no_grad():
        assert torch.allclose(grown(items, types, mask), encoder(items, types, mask))
