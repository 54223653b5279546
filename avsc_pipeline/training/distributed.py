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


def join(device_name: str = "auto", timeout_s: float = 1800.0) -> Context:
    """Join the process group when started by torchrun (else a single-process context).

    Under torchrun each process takes the GPU of its `LOCAL_RANK`; an explicit `cuda:N` there
    would put every rank on one GPU and is refused.

    Args:
        device_name: `auto`, `cpu`, `cuda` or (one process only) `cuda:N`.
        timeout_s: how long a collective waits for the other processes (the NCCL watchdog).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and device_name.startswith("cuda:"):
        raise ValueError(f"expected --device auto or cuda under torchrun (each process takes the GPU of its "
                         f"LOCAL_RANK), got {device_name!r}")
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        import datetime

        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, **kwargs)
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


def all_max(tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """The element-wise maximum of a tensor over all processes (itself when alone)."""
    if context.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def gather_objects(obj: object, context: Context) -> list:
    """Every process's `obj`, in rank order (a list of one when alone); a collective."""
    if not context.distributed:
        return [obj]
    out: list = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, context: Context) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics): DDP syncs them at the start
    of a training forward, so after the last step each process holds its own batch's update."""
    if context.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


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
