"""Reusable shared-memory batch buffers for DataLoader workers.

A worker hands a batch to the training process through shared memory. Left to itself, torch
allocates new shared memory for every batch, and on the development machines creating and
first touching 13 MB of shared pages costs 2-3x as much as reading the rows
(`bench/bench_loader.py`). Instead each worker keeps a few slots of shared buffers and reuses
them, with a flag per slot in a shared array that the training process owns:

1. the worker takes a slot whose flag is 0, sets it to 1, reads the batch into it, and sends
   the batch with the slot's number;
2. the training process, on receiving the batch, copies the frames and features out of the slot
   (or finds them already copied into pinned memory by the DataLoader) and sets the flag to 0.

The training process never hands out a slot's memory, so a batch kept by the caller is never
overwritten. When every slot of a worker is taken, the worker falls back to a new shared
buffer, as torch would.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

NO_SLOT = -1
Specs = Dict[str, Tuple[Tuple[int, ...], torch.dtype]]


def make_flags(num_workers: int, slots: int) -> torch.Tensor:
    """The shared `(num_workers * slots,)` uint8 flag array (0 = free), made by the training
    process before the workers start."""
    if num_workers < 1 or slots < 1:
        raise ValueError(f"expected num_workers >= 1 and slots >= 1, got {num_workers} and {slots}")
    return torch.zeros(num_workers * slots, dtype=torch.uint8).share_memory_()


class BatchPool:
    """One worker's slots of shared buffers.

    Args:
        flags: the shared flag array from :func:`make_flags`.
        worker_id: this worker's id; it owns flags `[worker_id * slots, (worker_id + 1) * slots)`.
        slots: slots per worker.
        capacity: rows per slot (the batch size).
        specs: per-row shape and dtype of each buffer (`ShardDataset.buffer_specs()`).
    """

    def __init__(self, flags: torch.Tensor, worker_id: int, slots: int, capacity: int, specs: Specs) -> None:
        if flags.numel() < (worker_id + 1) * slots:
            raise ValueError(f"expected flags for worker {worker_id} x {slots} slots, got {flags.numel()} flags")
        self.flags, self.slots, self.capacity, self.specs = flags, slots, capacity, specs
        self.first = worker_id * slots
        self.pid = os.getpid()
        self._buffers: List[Optional[Dict[str, torch.Tensor]]] = [None] * slots
        self.fallbacks = 0
        # Slots of an earlier set of workers are not ours: the training process released every
        # batch it received, and batches it never received are gone with those workers.
        self.flags[self.first:self.first + slots] = 0

    def acquire(self, rows: int) -> Tuple[int, Dict[str, torch.Tensor]]:
        """A free slot's number and buffers for `rows` rows, marked taken; or `NO_SLOT` and
        new shared buffers when none is free or `rows` exceeds the capacity."""
        if rows <= self.capacity:
            for k in range(self.slots):
                number = self.first + k
                if int(self.flags[number]) == 0:
                    self.flags[number] = 1
                    if self._buffers[k] is None:
                        self._buffers[k] = _shared_buffers(self.capacity, self.specs)
                    return number, self._buffers[k]
        self.fallbacks += 1
        logger.debug("worker pool: no free slot (%d fallbacks so far)", self.fallbacks)
        return NO_SLOT, _shared_buffers(rows, self.specs)


def _shared_buffers(rows: int, specs: Specs) -> Dict[str, torch.Tensor]:
    return {name: torch.empty((rows,) + shape, dtype=dtype).share_memory_() for name, (shape, dtype) in specs.items()}


def release(flags: torch.Tensor, slot: int) -> None:
    """Mark `slot` free again (training process side)."""
    if slot != NO_SLOT:
        flags[slot] = 0
