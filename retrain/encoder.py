"""The sequence encoder: a small causal transformer in the SASRec style.

Recent items and their event types go in, left-padded; the output at the last
position is the user vector, whose inner product with an item's embedding
scores that item as the next one. Read it top to bottom, like nanoGPT.

With a content tower (`content_buckets` > 0) an item's embedding is its id
embedding plus the mean of its content tokens' embeddings (streamrec/content.py):
an item the model has never seen gets a vector from its content alone. Training
drops the id part of items that have content now and then (`content_id_dropout`),
so that content alone must score them. `folded()` bakes the sum into one table
for serving: the ONNX encoder and the FAISS index see one vector per item, as
without a tower, and `ContentTower` is exported beside them for new items.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from streamrec.features import EVENT_TYPES

PAD = 0  # item row 0 and type 0 are padding; real types start at 1


@dataclass(frozen=True)
class EncoderConfig:
    n_items: int  # rows in the item table, padding row included
    dim: int = 96
    n_layers: int = 2
    n_heads: int = 2
    max_len: int = 50
    dropout: float = 0.25
    n_types: int = len(EVENT_TYPES) + 1
    # NISER-style scoring: cosine between user and item vectors times a fixed
    # scale; 0 keeps the raw inner product.
    cosine_scale: float = 12.0
    # The content tower: hashed token buckets (0: no tower) and tokens per item.
    content_buckets: int = 0
    content_slots: int = 0
    content_id_dropout: float = 0.25

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dim = config.dim
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        head_dim = self.dim // self.n_heads
        # (batch, length, dim) -> (batch, heads, length, head_dim), written without
        # reading shapes so the ONNX graph keeps batch and length dynamic.
        q, k, v = (
            part.unflatten(-1, (self.n_heads, head_dim)).transpose(1, 2)
            for part in self.qkv(hidden).split(self.dim, dim=2)
        )
        weights = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)
        # A large negative rather than -inf: a fully padded row must not turn into NaN.
        weights = weights.masked_fill(~attend[:, None, :, :], -1e9)
        weights = self.dropout(F.softmax(weights, dim=-1))
        out = (weights @ v).transpose(1, 2).flatten(2)
        projected: torch.Tensor = self.dropout(self.proj(out))
        return projected


class Block(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, 4 * config.dim),
            nn.GELU(),
            nn.Linear(4 * config.dim, config.dim),
            nn.Dropout(config.dropout),
        )

    def forward(self, hidden: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), attend)
        out: torch.Tensor = hidden + self.mlp(self.ln_2(hidden))
        return out


class SequenceEncoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items, config.dim, padding_idx=PAD)
        self.type_emb = nn.Embedding(config.n_types, config.dim, padding_idx=PAD)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.dim)
        self.content_emb = (
            nn.Embedding(config.content_buckets, config.dim, padding_idx=PAD)
            if config.content_buckets > 0
            else None
        )
        # Each item row's content tokens (0: padding); set by `set_content`.
        self.item_content: torch.Tensor
        self.register_buffer(
            "item_content", torch.zeros(config.n_items, config.content_slots, dtype=torch.long)
        )
        self.apply(_init_weights)

    def set_content(self, tokens: torch.Tensor) -> None:
        """(n_items, content_slots) token ids per item row (streamrec.content)."""
        if tokens.shape != self.item_content.shape:
            raise ValueError(
                f"content {tuple(tokens.shape)}, table {tuple(self.item_content.shape)}"
            )
        self.item_content.copy_(tokens)

    def content_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., dim): the mean embedding of each row's non-padding tokens, 0 for none."""
        if self.content_emb is None:
            raise ValueError("this encoder has no content tower")
        # A bag per row: no (rows, slots, dim) tensor is made, which for a full
        # softmax over a large table would be hundreds of megabytes a step.
        flat = tokens.reshape(-1, tokens.shape[-1])
        bags = F.embedding_bag(flat, self.content_emb.weight, mode="mean", padding_idx=PAD)
        return bags.reshape(*tokens.shape[:-1], self.config.dim)

    def item_rows(self, rows: torch.Tensor, drop_ids: bool = False) -> torch.Tensor:
        """Embeddings of these item rows: id + content. With `drop_ids` while training,
        the id part of an item that has content is left out at `content_id_dropout`."""
        ids: torch.Tensor = self.item_emb(rows)
        if self.content_emb is None:
            return ids
        tokens = self.item_content[rows]
        if drop_ids and self.training and self.config.content_id_dropout > 0:
            has_content = tokens[..., 0] > 0
            drop = torch.rand(has_content.shape) < self.config.content_id_dropout
            ids = ids * (~(drop & has_content)).unsqueeze(-1).to(ids.dtype)
        return ids + self.content_vectors(tokens)

    def hidden_states(
        self, item_ids: torch.Tensor, type_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(batch, length, dim): position t summarises events 0..t, the next-item query."""
        valid = mask > 0
        # Positions count from the first real event, so a prefix looks the same
        # whether it is read alone (serving) or inside a longer session (training).
        positions = (torch.cumsum(valid.long(), dim=1) - 1).clamp(min=0)
        hidden = self.item_rows(item_ids) + self.type_emb(type_ids) + self.pos_emb(positions)
        hidden = self.dropout(hidden * valid.unsqueeze(-1).to(hidden.dtype))
        # Column j is visible from column t when j <= t and j is not padding.
        column = torch.cumsum(torch.ones_like(item_ids), dim=1)
        attend = (column[:, :, None] >= column[:, None, :]) & valid[:, None, :]
        for block in self.blocks:
            hidden = block(hidden, attend)
        out: torch.Tensor = self.ln_f(hidden)
        return out

    def forward(
        self, item_ids: torch.Tensor, type_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The user vector: the state after the last (right-most) event."""
        return self.query(self.hidden_states(item_ids, type_ids, mask)[:, -1, :])

    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states to the vectors whose inner product with `item_vectors` scores items."""
        if self.config.cosine_scale > 0:
            return self.config.cosine_scale * F.normalize(hidden, dim=-1)
        return hidden

    def item_vectors(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The vectors user vectors are scored against: every row's, or these rows'."""
        if rows is None:
            rows = torch.arange(self.config.n_items)
        return self.item_space(self.item_rows(rows, drop_ids=True))

    def item_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.config.cosine_scale > 0:
            return F.normalize(embeddings, dim=-1)
        return embeddings

    def has_content(self) -> torch.Tensor:
        """(n_items,) bool: the rows whose item has any content token."""
        if self.content_emb is None:
            return torch.zeros(self.config.n_items, dtype=torch.bool)
        return self.item_content[:, 0] > 0

    def cold_view(self, trained: torch.Tensor) -> SequenceEncoder:
        """A copy in which an item the encoder did not train on (`trained` False) but
        has content is its content alone, as serving's live index holds a new item:
        its id embedding was never fitted (at most pushed away as a negative)."""
        view = SequenceEncoder(self.config)
        view.load_state_dict(self.state_dict())
        with torch.no_grad():
            view.item_emb.weight[~trained & self.has_content()] = 0.0
        return view.eval()

    def folded(self) -> SequenceEncoder:
        """This encoder for serving: the same outputs (in eval mode), with each item's
        id + content summed into one plain item table and no tower."""
        config = replace(self.config, content_buckets=0, content_slots=0)
        plain = SequenceEncoder(config)
        state = plain.state_dict()
        state.update({k: v for k, v in self.state_dict().items() if k in state})
        state["item_content"] = plain.item_content
        with torch.no_grad():
            state["item_emb.weight"] = self.item_rows(torch.arange(self.config.n_items))
            state["item_emb.weight"][PAD] = 0.0
        plain.load_state_dict(state)
        return plain.eval()


class ContentTower(nn.Module):
    """A new item's vector from its content tokens alone, in the space the FAISS
    index holds (normalised like `item_vectors` under cosine scoring)."""

    def __init__(self, encoder: SequenceEncoder) -> None:
        super().__init__()
        if encoder.content_emb is None:
            raise ValueError("this encoder has no content tower")
        self.encoder = encoder

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, slots) token ids -> (n, dim); written as a gather and a masked mean,
        which export to ONNX plainly, where an embedding bag does not."""
        table = self.encoder.content_emb
        assert table is not None
        present = (tokens > 0).unsqueeze(-1).to(table.weight.dtype)
        mean = (table(tokens) * present).sum(-2) / present.sum(-2).clamp(min=1.0)
        return self.encoder.item_space(mean)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def grow_items(
    encoder: SequenceEncoder,
    n_items: int,
    seed: int = 0,
    content_buckets: int | None = None,
    content_slots: int | None = None,
) -> SequenceEncoder:
    """A copy with room for `n_items` rows; existing rows are kept as they are. A
    content tower is added (or its shape changed) when asked: a new tower starts
    from scratch, and every row's content is 0 until `set_content`."""
    old = encoder.config.n_items
    if n_items < old:
        raise ValueError(f"the item table can only grow: has {old} rows, asked for {n_items}")
    config = replace(
        encoder.config,
        n_items=n_items,
        content_buckets=encoder.config.content_buckets
        if content_buckets is None
        else content_buckets,
        content_slots=encoder.config.content_slots if content_slots is None else content_slots,
    )
    grown = SequenceEncoder(config)
    state = encoder.state_dict()
    table = torch.empty(n_items, config.dim)
    generator = torch.Generator().manual_seed(seed)
    nn.init.normal_(table, std=0.02, generator=generator)
    table[:old] = state["item_emb.weight"]
    state["item_emb.weight"] = table
    fresh = grown.state_dict()
    state["item_content"] = fresh["item_content"]
    same_tower = (config.content_buckets, config.content_slots) == (
        encoder.config.content_buckets,
        encoder.config.content_slots,
    )
    if same_tower and encoder.content_emb is not None:
        state["item_content"][:old] = encoder.item_content
    elif "content_emb.weight" in fresh:
        state["content_emb.weight"] = fresh["content_emb.weight"]
    state = {k: v for k, v in state.items() if k in fresh}
    grown.load_state_dict(state)
    return grown
