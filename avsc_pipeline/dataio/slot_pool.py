"""Shared-memory batch slots, owned by the training process and filled by DataLoader workers.

A worker normally hands a batch over by moving its tensors into new shared memory, which the
training process then receives as file descriptors (a socket round trip each) and maps afresh.
On the development machines that costs several times the reading itself
(`bench/bench_loader.py`). Instead the training process allocates, before it starts a set of
workers, a few slots of shared buffers per worker and a flag per slot:

1. the worker takes one of its slots whose flag is 0, sets it to 1, reads the batch into the
   slot, and sends only the slot number with the small fields;
2. the training process wraps the slot's rows in new tensors (no copy) and watches their
   storages with weak references; once nothing in the process refers to them any more (the
   caller dropped the batch and every view of it) it sets the flag back to 0. For a CUDA
   device it copies the rows into pinned memory instead and frees the slot at once.

A slot is thus never overwritten while a tensor of the training process can still see it. A
caller that keeps batches only makes the worker fall back to torch's per-batch shared memory.
Memory: `num_workers * slots` batches of shared memory (13.5 MB each for 32 samples).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Tuple

import torch

logger = logging.getLogger(__name__)

NO_SLOT = -1
Specs = Dict[str, Tuple[Tuple[int, ...], torch.dtype]]


class SlotPool:
    """Slots of shared batch buffers for one set of workers.

    Args:
        num_workers: workers in the set.
        slots: slots per worker.
        capacity: rows per slot (the batch size).
        specs: per-row shape and dtype of each buffer (`ShardDataset.buffer_specs()`).
    """

    def __init__(self, num_workers: int, slots: int, capacity: int, specs: Specs) -> None:
        if num_workers < 1 or slots < 1 or capacity < 1:
            raise ValueError(f"expected num_workers, slots and capacity >= 1, got {num_workers}, {slots}, {capacity}")
        self.slots, self.capacity = slots, capacity
        total = num_workers * slots
        self.flags = torch.zeros(total, dtype=torch.uint8).share_memory_()
        self.buffers = {name: torch.empty((total, capacity) + shape, dtype=dtype).share_memory_()
                        for name, (shape, dtype) in specs.items()}
        self.fallbacks = 0

    def acquire(self, worker_id: int, rows: int) -> Tuple[int, Dict[str, torch.Tensor]]:
        """Worker side: a free slot of `worker_id`, marked taken, and its buffers for `rows`
        rows; or `NO_SLOT` and no buffers when none is free or `rows` exceeds the capacity."""
        if rows <= self.capacity:
            first = worker_id * self.slots
            for slot in range(first, first + self.slots):
                if int(self.flags[slot]) == 0:
                    self.flags[slot] = 1
                    return slot, {name: buf[slot, :rows] for name, buf in self.buffers.items()}
        self.fallbacks += 1
        logger.debug("slot pool: no free slot for worker %d (%d fallbacks so far)", worker_id, self.fallbacks)
        return NO_SLOT, {}

    def view(self, slot: int, rows: int) -> Dict[str, torch.Tensor]:
        """Training-process side: new tensors over the first `rows` rows of `slot` (their own
        storages, sharing the slot's memory, so that they can be watched)."""
        return {name: torch.from_numpy(buf[slot, :rows].numpy()) for name, buf in self.buffers.items()}

    def release(self, slot: int) -> None:
        """Mark `slot` free."""
        self.flags[slot] = 0


class PendingSlots:
    """Slots whose batches the training process handed out, freed once nothing refers to them."""

    def __init__(self) -> None:
        self._pending: List[Tuple[SlotPool, int, List[Any]]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, pool: SlotPool, slot: int, tensors: List[torch.Tensor]) -> None:
        """Watch `tensors`, the batch handed out from `slot` of `pool`."""
        from torch.multiprocessing.reductions import StorageWeakRef

        self._pending.append((pool, slot, [StorageWeakRef(t.untyped_storage()) for t in tensors]))

    def release_unreferenced(self) -> int:
        """Free every watched slot whose tensors nothing refers to any more; returns how many."""
        still = []
        for pool, slot, refs in self._pending:
            if all(ref.expired() for ref in refs):
                pool.release(slot)
            else:
                still.append((pool, slot, refs))
        released = len(self._pending) - len(still)
        self._pending = still
        return released
