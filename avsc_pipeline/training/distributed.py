"""Several processes through `torchrun`: process group set-up, rank checks, reductions.

`torchrun --standalone --nproc_per_node N --no-python avsc-train ...` sets `RANK`, `WORLD_SIZE`
and `LOCAL_RANK`; each process then trains on its share of every epoch. NCCL on CUDA, gloo on
CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from avsc_pipeline.devices import pick_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where this process runs: its device, rank and world size."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1


def setup(device_name: str = "auto") -> Context:
    """Join the process group when started by torchrun (else a single-process context)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        logger.info("process group: rank %d of %d (%s)", rank, world_size, backend)
    return Context(device, rank, world_size, local_rank)


def teardown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """Sum a tensor over all processes (itself when alone)."""
    if context.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(context: Context) -> None:
    """Wait for every process."""
    if context.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, context: Context) -> bool:
    """True on every process when it is true on any (e.g. a stop request)."""
    if not context.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP and `torch.compile` wrappers."""
    while True:
        inner: Optional[torch.nn.Module] = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
