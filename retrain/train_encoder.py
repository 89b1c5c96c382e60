"""Training the sequence encoder: next-item prediction at every position with
softmax cross-entropy over the item table (tied input/output embeddings), either
full or sampled.

Sampled softmax (`negatives` > 0) scores each position against its own next item
and one shared draw of `negatives` items per batch, taken from a mix of the
uniform and the target-frequency distribution, with the logQ correction (each
logit minus log of its expected count in the draw) so the loss estimates the
full softmax; a negative that is the position's own target is masked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from retrain.batches import training_batches, training_windows
from retrain.distributed import SINGLE, Group
from retrain.encoder import EncoderConfig, SequenceEncoder


@dataclass(frozen=True)
class EncoderTraining:
    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    negatives: int = 0  # 0: full softmax; else sampled softmax with this many per batch
    seed: int = 0


@dataclass
class TrainingLog:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    epoch_metrics: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train_encoder(
    encoded: Sequence[tuple[np.ndarray, np.ndarray]],
    config: EncoderConfig,
    training: EncoderTraining,
    validate: Callable[[SequenceEncoder], dict[str, float]] | None = None,
    encoder: SequenceEncoder | None = None,
    progress: bool = True,
    group: Group = SINGLE,
) -> tuple[SequenceEncoder, TrainingLog]:
    """Train (or warm-start `encoder`) on encoded sequences; `validate` runs after
    each epoch on held-out data, never on the test split.

    In a group of several processes (retrain/distributed.py) every process takes
    every `world_size`-th training window (the same number each: up to
    `world_size` - 1 windows are left out) in batches of `batch_size /
    world_size`, in its own order, and DistributedDataParallel averages the
    gradients of each step, so the model stays the same in every process and a
    step sees `batch_size` windows as with one process: the same number of steps
    at the same learning rate (a batch of `batch_size` per process halved the
    steps and cost 3 points of P@20 in two epochs: docs/models.md). The
    negatives' distribution is the whole data's. Only rank 0 validates and
    shows progress."""
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed + group.rank)
    encoder = encoder if encoder is not None else SequenceEncoder(config)
    windows = training_windows(encoded, config.max_len)
    proposal = _proposal(windows, config.n_items) if training.negatives else None
    batch_size = training.batch_size
    if group.distributed:
        share = len(windows) // group.world_size
        windows = windows[group.rank :: group.world_size][:share]
        batch_size = max(1, batch_size // group.world_size)
        progress = progress and group.writes
    step_loss = _StepLoss(encoder, proposal, training)
    model: torch.nn.Module = step_loss
    if group.distributed:
        model = torch.nn.parallel.DistributedDataParallel(step_loss)
    optimizer = torch.optim.AdamW(
        encoder.parameters(), lr=training.lr, weight_decay=training.weight_decay
    )
    steps_per_epoch = -(-len(windows) // batch_size)
    total_steps = max(1, steps_per_epoch * training.epochs)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=training.lr, total_steps=total_steps, pct_start=0.1, anneal_strategy="cos"
    )
    log = TrainingLog()
    started = time.perf_counter()
    step = 0
    for epoch in range(training.epochs):
        encoder.train()
        bar = tqdm(
            training_batches(windows, batch_size, rng),
            total=steps_per_epoch,
            desc=f"encoder epoch {epoch + 1}/{training.epochs}",
            disable=not progress,
            leave=False,
        )
        running = 0.0
        for item_ids, type_ids, mask, next_ids in bar:
            loss = model(item_ids, type_ids, mask, next_ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            running = 0.98 * running + 0.02 * loss.item() if running else loss.item()
            if step % 20 == 0:
                log.steps.append(step)
                log.losses.append(running)
                bar.set_postfix(loss=f"{running:.3f}")
        metrics: dict[str, float] = {"epoch": epoch + 1, "loss": running}
        if validate is not None and group.writes:
            encoder.eval()
            metrics.update(validate(encoder))
        log.epoch_metrics.append(metrics)
        if progress:
            tqdm.write(
                f"encoder epoch {epoch + 1}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            )
    encoder.eval()
    log.seconds = time.perf_counter() - started
    return encoder, log


class _StepLoss(torch.nn.Module):
    """One step's loss as a module's forward, so that DistributedDataParallel sees
    the step (it averages gradients on the backward of what its forward made)."""

    def __init__(
        self, encoder: SequenceEncoder, proposal: torch.Tensor | None, training: EncoderTraining
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.proposal = proposal
        self.negatives = training.negatives
        self.label_smoothing = training.label_smoothing

    def forward(
        self,
        item_ids: torch.Tensor,
        type_ids: torch.Tensor,
        mask: torch.Tensor,
        next_ids: torch.Tensor,
    ) -> torch.Tensor:
        encoder = self.encoder
        hidden = encoder.hidden_states(item_ids, type_ids, mask)
        valid = mask > 0
        if self.proposal is None:
            logits = encoder.query(hidden[valid]) @ encoder.item_vectors().T
            logits[:, 0] = -1e9  # never predict padding
            return F.cross_entropy(logits, next_ids[valid], label_smoothing=self.label_smoothing)
        return _sampled_loss(encoder, hidden[valid], next_ids[valid], self.proposal, self.negatives)


def _proposal(windows: Sequence[tuple[np.ndarray, np.ndarray]], n_items: int) -> torch.Tensor:
    """Where negatives come from: half uniform over real items, half by how often each
    item is a training target (popular items are the hard negatives)."""
    targets = np.concatenate([rows[1:] for rows, _ in windows] or [np.zeros(0, np.int64)])
    counts = np.bincount(targets, minlength=n_items).astype(np.float64)
    counts[0] = 0.0
    uniform = np.ones(n_items, dtype=np.float64)
    uniform[0] = 0.0
    mix = 0.5 * uniform / uniform.sum() + 0.5 * counts / max(counts.sum(), 1.0)
    return torch.from_numpy(mix.astype(np.float32))


def _sampled_loss(
    encoder: SequenceEncoder,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    proposal: torch.Tensor,
    negatives: int,
) -> torch.Tensor:
    sampled = torch.multinomial(proposal, negatives, replacement=True)
    rows = torch.cat([targets, sampled])
    weights = encoder.item_vectors(rows)
    queries = encoder.query(hidden)
    positive = (queries * weights[: len(targets)]).sum(-1, keepdim=True)
    negative = queries @ weights[len(targets) :].T
    log_q = torch.log(proposal * negatives)
    positive = positive - log_q[targets].unsqueeze(-1)
    negative = negative - log_q[sampled]
    negative = negative.masked_fill(sampled.unsqueeze(0) == targets.unsqueeze(-1), -1e9)
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))
