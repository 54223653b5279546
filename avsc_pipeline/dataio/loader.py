"""DataLoader set-up: whole batches read by workers into shared-memory slots.

Workers read whole batches (:meth:`ShardDataset.read_batch`) into shared-memory slots that the
training process owns and hands out without a copy (:mod:`~avsc_pipeline.dataio.slot_pool`);
frames stay uint8, and audio in its stored dtype, until they reach the device: a quarter of
the float32 traffic for the frames. :class:`~avsc_pipeline.dataio.preparation.BatchPreparer`
then prepares them on the device.

Workers leave SIGINT and SIGTERM to the training process (:func:`init_worker`): a scheduler's
pre-emption signals the whole process group, and the training process must finish its step and
write `last.pt` before its workers go.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from avsc_pipeline.dataio.slot_pool import NO_SLOT, PendingSlots, SlotPool
from avsc_pipeline.sections.loading import LoaderConfig
from avsc_pipeline.dataio.dataset import ShardDataset

SMALL_KEYS = ("label", "segment", "index")
#: The signals that stop a training run (the trainer finishes its step and writes last.pt).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class BatchReads(torch.utils.data.Dataset):
    """A dataset of whole batches: item `[i, j, ...]` is `ShardDataset.read_batch([i, j, ...])`.

    Used with a `BatchSampler` as the sampler and `batch_size=None`, so a worker reads a batch
    at once instead of collating single items. Audio stays in its stored dtype (converted on
    the device). With a slot pool (set by :class:`ShardLoader` for each set of workers), a
    worker reads into one of its slots and returns the batch without `audio` and `video` but
    with `"slot"` and `"rows"`, and the small integer fields as numpy arrays;
    :class:`ShardLoader` puts it back together.

    Args:
        dataset: the items.
        slots: slots per worker (0: no pool; every batch travels in new shared memory).
        capacity: rows per slot.
    """

    def __init__(self, dataset: ShardDataset, slots: int = 0, capacity: int = 1) -> None:
        self.dataset, self.slots, self.capacity = dataset, slots, capacity
        self.pool: Optional[SlotPool] = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> Dict[str, Any]:
        info = torch.utils.data.get_worker_info()
        slot, buffers = NO_SLOT, None
        if info is not None and self.pool is not None:
            slot, buffers = self.pool.acquire(info.id, len(indices))
        batch = self.dataset.read_batch(indices, out=buffers or None, audio_float32=False)
        if info is not None:
            for key in SMALL_KEYS:
                # Sent by value: a tensor would cost a new shared-memory segment per batch.
                batch[key] = batch[key].numpy()
        if slot != NO_SLOT:
            for key in buffers:
                del batch[key]
            batch.update(slot=slot, rows=len(indices))
        return batch


def keep_batch(batch: Dict[str, Any]) -> Dict[str, Any]:
    """The collate function of :class:`BatchReads` batches: they are already collated."""
    return batch


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a worker from torch's per-worker seed (a SeedSequence)."""
    seed = torch.initial_seed() % 2**63
    state = np.random.SeedSequence([seed, worker_id]).generate_state(2)
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))


def init_worker(worker_id: int) -> None:
    """The `worker_init_fn` of every loader: :func:`leave_stop_signals_to_parent`, then
    :func:`seed_worker`."""
    leave_stop_signals_to_parent()
    seed_worker(worker_id)


def leave_stop_signals_to_parent() -> None:
    """In a loader worker: SIGINT and SIGTERM from anyone but the parent leave the worker alone.

    Ctrl-C, `kill -- -PGID` and a scheduler's pre-emption signal the whole process group. The
    training process then finishes its step, writes `last.pt` and shuts its workers down; a
    worker must not die first (torch's worker handler re-raises a SIGTERM that does not come
    from the parent, and the parent then fails with "DataLoader worker ... is killed by signal:
    Terminated"). A SIGTERM from the parent (the loader's last-resort `terminate()`) still ends
    the worker at once, as torch's handler does. The signals stay blocked (workers start with
    them blocked: :func:`_stop_signals_blocked`) and a thread takes them with `sigwaitinfo`,
    which tells who sent them; where that call is missing they are ignored.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: ignored (discards pending ones), then unblocked
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return
    parent = os.getppid()

    def take_signals() -> None:
        while True:
            info = signal.sigwaitinfo(STOP_SIGNALS)
            if info.si_signo == signal.SIGTERM and info.si_pid == parent:
                os._exit(0)

    threading.Thread(target=take_signals, name="stop-signals", daemon=True).start()


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread while it starts loader workers, so that a worker
    starts with them blocked and meets none before :func:`init_worker` runs. One arriving
    meanwhile goes to another thread of this process, or waits for this one."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class ShardLoader(torch.utils.data.DataLoader):
    """A DataLoader of :class:`BatchReads` batches, with a slot pool for its workers.

    Each set of workers gets a new :class:`~avsc_pipeline.dataio.slot_pool.SlotPool`.
    Batches read into a slot come out as tensors over the slot's memory, without a copy, and
    the slot is given back once nothing refers to them; with `pin_slots` (a CUDA device) they
    are copied into pinned memory instead and the slot is given back at once. That copy (a few
    milliseconds per 13.5 MB batch, on one thread under torchrun's `OMP_NUM_THREADS=1`) runs on
    a copying thread that stays `depth` batches ahead, not on the training loop's thread.

    Args:
        *args, **kwargs: as for `DataLoader`.
        pin_slots: copy slot batches into pinned memory.
        copy_slots: copy slot batches out of their slots on the copying thread (implied by
            `pin_slots`; without it, into ordinary memory).
        depth: batches the copying thread keeps ready.
    """

    def __init__(self, *args: Any, pin_slots: bool = False, copy_slots: bool = False, depth: int = 2,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pin_slots = pin_slots
        self.copy_slots = copy_slots or pin_slots
        self.depth = depth
        self._pending = PendingSlots()

    def __iter__(self) -> Iterator[Dict[str, Any]]:  # type: ignore[override]
        batches = self._batches()
        if not self.copy_slots or self.num_workers == 0:
            return batches
        return _ahead(batches, self.depth)

    def _batches(self) -> Iterator[Dict[str, Any]]:
        # The previous pass's last batches were still referenced when it ended; free them now.
        self._pending.release_unreferenced()
        reads = self.dataset
        if isinstance(reads, BatchReads) and reads.slots > 0 and self.num_workers > 0:
            if reads.pool is None or not self.persistent_workers:  # a new set of workers
                reads.pool = SlotPool(self.num_workers, reads.slots, reads.capacity,
                                      reads.dataset.buffer_specs())
        with _stop_signals_blocked():  # a new set of workers starts here
            batches = super().__iter__()
        for batch in batches:
            for key in SMALL_KEYS:
                batch[key] = torch.as_tensor(batch[key])
            slot = batch.pop("slot", NO_SLOT)
            if slot != NO_SLOT:
                batch.update(self._from_slot(reads.pool, slot, batch.pop("rows")))
            self._pending.release_unreferenced()
            yield batch
            del batch  # so that the previous batch can be released on the next round
        self._pending.release_unreferenced()

    def _from_slot(self, pool: SlotPool, slot: int, rows: int) -> Dict[str, torch.Tensor]:
        tensors = pool.view(slot, rows)
        if self.copy_slots:
            tensors = {k: torch.empty_like(v, pin_memory=self.pin_slots).copy_(v) for k, v in tensors.items()}
            pool.release(slot)
        else:
            self._pending.add(pool, slot, list(tensors.values()))
        return tensors

    def release_unreferenced(self) -> int:
        """Give back the slots of handed-out batches that nothing refers to any more. Iteration
        does it on every batch, at the end of a pass and at the start of the next, so callers
        need not; returns how many."""
        return self._pending.release_unreferenced()


def _ahead(items: Iterator[Dict[str, Any]], depth: int) -> Iterator[Dict[str, Any]]:
    """`items`, produced on a thread of their own that stays up to `depth` items ahead; an
    exception there is raised here, and leaving the loop early stops the thread."""
    import queue
    import threading

    done = object()
    ready: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consuming thread, raised there
            ready.put(err)

    thread = threading.Thread(target=produce, name="slot-copy", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def worker_count(configured: int) -> int:
    """Loader workers for `loader.num_workers`: itself when >= 0; for -1, the cores left per
    training process on this machine (torchrun's `LOCAL_WORLD_SIZE` processes, one core each for
    the training loop), at least 1 and at most 8."""
    import os

    if configured >= 0:
        return configured
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cores // processes - 1))


def make_loader(dataset: ShardDataset, sampler: torch.utils.data.Sampler, config: LoaderConfig,
                device: "torch.device | str", seed: int = 0,
                drop_last: Optional[bool] = None) -> ShardLoader:
    """A DataLoader of whole batches from `dataset` in `sampler`'s order.

    Args:
        dataset: the items.
        sampler: yields item positions (e.g. an :class:`EpochSampler`; call its `set_epoch`).
        config: batch size, workers, pinning, persistence, prefetching.
        device: the training device; memory is pinned only for CUDA.
        seed: seeds the workers.
        drop_last: overrides `config.drop_last` (e.g. False for validation).

    Returns:
        A loader yielding dicts as :meth:`ShardDataset.read_batch` returns them, with audio in
        its stored dtype; pass them to a :class:`BatchPreparer`.
    """
    device = torch.device(device)
    pin = config.pin_memory and device.type == "cuda"
    batches = torch.utils.data.BatchSampler(sampler, config.batch_size,
                                            config.drop_last if drop_last is None else drop_last)
    kwargs: Dict[str, Any] = {}
    reads = BatchReads(dataset)
    workers = worker_count(config.num_workers)
    if workers > 0:
        kwargs.update(persistent_workers=config.persistent_workers, prefetch_factor=config.prefetch_factor)
        # Per worker: the batches in flight, the one in use and the one before it (given back
        # a round late, when the caller's loop variable moves on).
        reads = BatchReads(dataset, slots=config.prefetch_factor + 2, capacity=config.batch_size)
    return ShardLoader(
        reads, batch_size=None, sampler=batches, num_workers=workers, collate_fn=keep_batch,
        pin_memory=pin, pin_slots=pin, worker_init_fn=init_worker,
        generator=torch.Generator().manual_seed(seed), **kwargs,
    )
