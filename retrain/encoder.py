"""The sequence encoder: a small causal transformer in the SASRec style.

Recent items and their event types go in, left-padded; the output at the last
position is the user vector, whose inner product with an item's embedding
scores that item as the next one. Read it top to bottom, like nanoGPT.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
        self.apply(_init_weights)

    def hidden_states(
        self, item_ids: torch.Tensor, type_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(batch, length, dim): position t summarises events 0..t, the next-item query."""
        valid = mask > 0
        # Positions count from the first real event, so a prefix looks the same
        # whether it is read alone (serving) or inside a longer session (training).
        positions = (torch.cumsum(valid.long(), dim=1) - 1).clamp(min=0)
        hidden = self.item_emb(item_ids) + self.type_emb(type_ids) + self.pos_emb(positions)
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

    def item_vectors(self) -> torch.Tensor:
        if self.config.cosine_scale > 0:
            return F.normalize(self.item_emb.weight, dim=-1)
        return self.item_emb.weight


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def grow_items(encoder: SequenceEncoder, n_items: int, seed: int = 0) -> SequenceEncoder:
    """A copy with room for `n_items` rows; existing rows are kept as they are."""
    old = encoder.config.n_items
    if n_items < old:
        raise ValueError(f"the item table can only grow: has {old} rows, asked for {n_items}")
    config = EncoderConfig(**{**encoder.config.to_dict(), "n_items": n_items})  # type: ignore[arg-type]
    grown = SequenceEncoder(config)
    state = encoder.state_dict()
    table = torch.empty(n_items, config.dim)
    generator = torch.Generator().manual_seed(seed)
    nn.init.normal_(table, std=0.02, generator=generator)
    table[:old] = state["item_emb.weight"]
    state["item_emb.weight"] = table
    grown.load_state_dict(state)
    return grown
