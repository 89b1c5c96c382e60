"""Training the sequence encoder: next-item prediction at every position with
full softmax cross-entropy over the item table (tied input/output embeddings).
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
from retrain.encoder import EncoderConfig, SequenceEncoder


@dataclass(frozen=True)
class EncoderTraining:
    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
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
) -> tuple[SequenceEncoder, TrainingLog]:
    """Train (or warm-start `encoder`) on encoded sequences; `validate` runs after
    each epoch on held-out data, never on the test split."""
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    encoder = encoder if encoder is not None else SequenceEncoder(config)
    windows = training_windows(encoded, config.max_len)
    optimizer = torch.optim.AdamW(
        encoder.parameters(), lr=training.lr, weight_decay=training.weight_decay
    )
    steps_per_epoch = -(-len(windows) // training.batch_size)
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
            training_batches(windows, training.batch_size, rng),
            total=steps_per_epoch,
            desc=f"encoder epoch {epoch + 1}/{training.epochs}",
            disable=not progress,
            leave=False,
        )
        running = 0.0
        for item_ids, type_ids, mask, next_ids in bar:
            hidden = encoder.hidden_states(item_ids, type_ids, mask)
            valid = mask > 0
            logits = encoder.query(hidden[valid]) @ encoder.item_vectors().T
            logits[:, 0] = -1e9  # never predict padding
            loss = F.cross_entropy(
                logits, next_ids[valid], label_smoothing=training.label_smoothing
            )
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
        if validate is not None:
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
