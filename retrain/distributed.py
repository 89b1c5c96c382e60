"""Training on several processes: torch.distributed with torchrun's contract.

`streamrec train --nproc N` and `streamrec retrain --nproc N` start themselves
again under `torch.distributed.run` (torchrun): N processes on this node, each
with `RANK`, `WORLD_SIZE`, `LOCAL_RANK` and a rendezvous in its environment
(`--standalone`). A multi-node run uses torchrun directly with the same
command (`torchrun --nnodes ... -m cli train ...`): every process reads the
same data, the encoder trains under DistributedDataParallel with each process
taking its own share of the training windows (gloo on CPU, NCCL when the
processes have GPUs), and the process of rank 0 alone goes on to the ranker,
the export and the publish; the others end once the encoder is trained.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Only one process writes the bundle: rank 0."""
        return self.rank == 0


SINGLE = Group()


class Finished(Exception):
    """This process's part of a distributed training run is done: the encoder is
    trained, and only rank 0 goes on (caught by the command, which exits 0)."""


def joined() -> Group:
    """This process's place in the group torchrun started (joining it on the first
    call); `SINGLE` when not started by torchrun or with one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        log.info("training process %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return Group(dist.get_rank(), dist.get_world_size())


def leave() -> None:
    """Leave the group (every process, once the encoder is trained)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `python -m cli <argv>` as `nproc` processes under torchrun on this node;
    their exit code (torchrun's: non-zero when any process failed)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "cli",
        *argv,
    ]
    # One intra-op thread each unless told otherwise: N processes on N cores.
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    return subprocess.run(command, env=env, check=False).returncode


def without_nproc(argv: list[str]) -> list[str]:
    """`argv` without its `--nproc N` / `--nproc=N` (the relaunched processes must
    not relaunch again)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out
