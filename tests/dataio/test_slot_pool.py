"""The shared-memory slot pool: per-worker slots, capacity, views, and release once unreferenced."""

from __future__ import annotations

import gc

import pytest
import torch

from avsc_pipeline.dataio.slot_pool import NO_SLOT, PendingSlots, SlotPool

SPECS = {"audio": ((6, 4, 3), torch.float32), "video": ((2, 3, 5, 5), torch.uint8)}


def make_pool(num_workers: int = 2, slots: int = 2, capacity: int = 4) -> SlotPool:
    return SlotPool(num_workers, slots, capacity, SPECS)


def test_buffers_are_shared_and_shaped_per_worker_slot():
    pool = make_pool()
    assert pool.flags.is_shared() and pool.flags.tolist() == [0, 0, 0, 0]
    for name, (shape, dtype) in SPECS.items():
        buffer = pool.buffers[name]
        assert buffer.is_shared() and buffer.dtype == dtype and tuple(buffer.shape) == (4, 4) + shape


def test_acquire_takes_the_workers_own_free_slots_then_falls_back():
    pool = make_pool()
    slot, buffers = pool.acquire(1, 3)
    assert slot == 2 and pool.flags.tolist() == [0, 0, 1, 0]  # worker 1 owns slots 2 and 3
    assert {k: tuple(v.shape) for k, v in buffers.items()} == {"audio": (3, 6, 4, 3), "video": (3, 2, 3, 5, 5)}
    assert buffers["audio"].data_ptr() == pool.buffers["audio"][2].data_ptr()
    assert pool.acquire(1, 4)[0] == 3
    assert pool.acquire(1, 1) == (NO_SLOT, {}) and pool.fallbacks == 1  # both of worker 1's taken
    assert pool.acquire(0, 4)[0] == 0  # worker 0's slots are its own


def test_a_batch_above_capacity_falls_back_even_with_free_slots():
    pool = make_pool(capacity=4)
    assert pool.acquire(0, 5) == (NO_SLOT, {})
    assert pool.fallbacks == 1 and pool.flags.sum() == 0


@pytest.mark.parametrize("args", [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_refuses_empty_pools(args):
    with pytest.raises(ValueError, match=r"expected num_workers, slots and capacity >= 1, got"):
        SlotPool(*args, SPECS)


def test_view_sees_what_the_worker_wrote_and_release_frees_the_slot():
    pool = make_pool()
    slot, buffers = pool.acquire(0, 3)
    buffers["audio"].copy_(torch.arange(3 * 72, dtype=torch.float32).view(3, 6, 4, 3))
    buffers["video"].fill_(7)
    view = pool.view(slot, 3)
    assert torch.equal(view["audio"], buffers["audio"]) and (view["video"] == 7).all()
    assert view["audio"].untyped_storage().data_ptr() == buffers["audio"].data_ptr()  # no copy
    assert view["audio"].untyped_storage() is not pool.buffers["audio"].untyped_storage()  # own storage
    assert tuple(pool.view(slot, 2)["video"].shape) == (2, 2, 3, 5, 5)
    pool.release(slot)
    assert pool.flags[slot] == 0 and pool.acquire(0, 1)[0] == slot


def test_pending_slots_release_only_slots_nothing_refers_to():
    pool = make_pool()
    pending = PendingSlots()
    first, _ = pool.acquire(0, 2)
    second, _ = pool.acquire(0, 2)
    batch_a, batch_b = pool.view(first, 2), pool.view(second, 2)
    pending.add(pool, first, list(batch_a.values()))
    pending.add(pool, second, list(batch_b.values()))
    kept_frame = batch_b["video"][1, 0]  # a view keeps its batch's storage alive
    del batch_a, batch_b
    gc.collect()
    assert pending.release_unreferenced() == 1 and len(pending) == 1
    assert pool.flags[first] == 0 and pool.flags[second] == 1
    assert pending.release_unreferenced() == 0
    del kept_frame
    gc.collect()
    assert pending.release_unreferenced() == 1 and len(pending) == 0
    assert pool.flags.sum() == 0
