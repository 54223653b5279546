"""The training loader: every item once per epoch through shared-memory slots, and the whole
stage-two input built from shard folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsc_pipeline.sections.loading import BatchAugmentConfig, LoaderConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import make_loader
from avsc_pipeline.dataio.training_input import build_training_input, process_seed
from avsc_pipeline.dataio.samplers import EpochSampler
from avsc_pipeline.models.video import IMAGENET_MEAN, IMAGENET_STD

FRAMES = (IMAGENET_MEAN, IMAGENET_STD)  # what the model hands the training input


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_reads_every_item_once_per_epoch(small_pair, workers):
    dataset = ShardDataset([small_pair / "train", small_pair / "train-aug"])
    sampler = EpochSampler(np.arange(len(dataset)), seed=0)
    config = LoaderConfig(batch_size=4, num_workers=workers, prefetch_factor=2, drop_last=False)
    loader = make_loader(dataset, sampler, config, "cpu")
    kept, view = [], None
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = []
        for batch in loader:
            assert batch["video"].dtype == torch.uint8 and batch["audio"].dtype == torch.float32
            assert batch["label"].dtype == torch.int64 and "slot" not in batch
            reference = dataset.read_batch(batch["index"].tolist())
            assert torch.equal(batch["video"], reference["video"]) and torch.equal(batch["audio"], reference["audio"])
            if epoch == 0:  # every batch kept
                kept.append((batch["index"].clone(), batch["video"], batch["audio"]))
            if epoch == 1 and view is None:  # only a view of one frame kept
                view = (batch["index"][0].item(), batch["video"][0, 1])
            seen.extend(batch["index"].tolist())
        assert sorted(seen) == list(range(len(dataset)))
    for index, video, audio in kept:  # batches kept past later ones are intact
        reference = dataset.read_batch(index.tolist())
        assert torch.equal(video, reference["video"]) and torch.equal(audio, reference["audio"])
    assert torch.equal(view[1], dataset[view[0]]["video"][1])
    if workers:
        del kept, batch, video, audio, view
        loader.release_unreferenced()
        assert int(loader.dataset.pool.flags.sum()) == 0


def test_build_training_input_end_to_end(small_pair):
    config = LoaderConfig(batch_size=4, num_workers=0, val_fraction=0.34, aug_fraction=0.5,
                          audio_normalize="standardize")
    inputs = build_training_input(small_pair, config, BatchAugmentConfig(), "cpu", seed=1, frame_norm=FRAMES)
    assert [p.name for p in inputs.folders] == ["train", "train-aug"]
    ids = inputs.dataset.identifiers
    assert len(inputs.split.validation) and not set(ids[inputs.split.train]) & set(ids[inputs.split.validation])
    assert (small_pair / "train" / "audio_stats.json").is_file()
    inputs.train_sampler.set_epoch(0)
    batch = inputs.preparer.train()(next(iter(inputs.loader(inputs.train_sampler))))
    assert batch["audio"].shape == (4, 6, 128, 39) and batch["video"].dtype == torch.float32
    assert batch["target"].shape == (4, 10)
    validation = EpochSampler(inputs.split.validation, shuffle=False)
    seen = [i for b in inputs.loader(validation, drop_last=False) for i in b["index"].tolist()]
    assert sorted(seen) == sorted(inputs.split.validation.tolist())
    inputs.close()


def test_each_rank_draws_its_own_augmentation(small_pair):
    config = LoaderConfig(batch_size=8, num_workers=0, val_fraction=0.0)
    augment = BatchAugmentConfig(video_ops=(), mixup_fraction=0.0, channel_swap_p=0.5)
    ranks = [build_training_input(small_pair, config, augment, "cpu", seed=3, rank=rank, frame_norm=FRAMES) for rank in (0, 1)]
    assert process_seed(3, 0) == 3 and len({process_seed(3, r) for r in range(4)}) == 4
    raw = ranks[0].dataset.read_batch(list(range(8)))
    first, second = (inputs.preparer.train()(dict(raw))["audio"] for inputs in ranks)
    assert not torch.equal(first, second), "two ranks drew the same SpecAugment masks and channel swaps"
    for inputs in ranks:
        inputs.close()


def test_unlabeled_rows_stay_out_of_training_and_validation(tmp_path, caplog):
    from avsc_pipeline import testing
    from avsc_pipeline.storage.index import build_index

    path = testing.write_random_shard(tmp_path / "train" / "shard-00000.h5", 30, testing.SMALL_FEATURES, identifiers=3)
    import h5py

    with h5py.File(path, "r+") as handle:
        labels = handle["label"][:]
        labels[:10] = -1
        handle["label"][:] = labels
    build_index(tmp_path / "train")
    caplog.set_level("WARNING", logger="avsc_pipeline")
    inputs = build_training_input(tmp_path, LoaderConfig(num_workers=0, val_fraction=0.34), None, "cpu", frame_norm=FRAMES)
    used = np.concatenate([inputs.split.train, inputs.split.validation])
    assert len(used) == 20 and (inputs.dataset.labels[used] >= 0).all()
    assert "10 rows without a label" in caplog.text
    inputs.close()


def test_slots_copied_on_a_thread_of_their_own_give_every_item_once(small_pair):
    """The copy out of the shared-memory slots (into pinned memory on CUDA) runs off the loop's
    thread; batches, order and contents stay those of the plain loader."""
    import threading

    from avsc_pipeline.dataio.loader import ShardLoader

    dataset = ShardDataset([small_pair / "train"])
    sampler = EpochSampler(np.arange(len(dataset)), seed=0)
    config = LoaderConfig(batch_size=4, num_workers=2, prefetch_factor=2, drop_last=False, persistent_workers=False)
    plain = [b["index"].tolist() for b in make_loader(dataset, sampler, config, "cpu")]
    loader = make_loader(dataset, sampler, config, "cpu")
    assert isinstance(loader, ShardLoader)
    loader.copy_slots = True
    threads = set()
    real = loader._from_slot

    def spying(*args):
        threads.add(threading.current_thread().name)
        return real(*args)

    loader._from_slot = spying
    seen = []
    for batch in loader:
        reference = dataset.read_batch(batch["index"].tolist())
        assert torch.equal(batch["video"], reference["video"]) and torch.equal(batch["audio"], reference["audio"])
        seen.append(batch["index"].tolist())
    assert seen == plain and threads == {"slot-copy"}
    assert int(loader.dataset.pool.flags.sum()) == 0  # every slot given back at once
    for batch in loader:  # leaving early stops the copying thread
        break


def test_audio_goes_in_as_stored_unless_standardization_is_asked_for(small_pair):
    stored = build_training_input(small_pair, LoaderConfig(num_workers=0, val_fraction=0.0), None, "cpu", frame_norm=FRAMES)
    assert stored.audio_stats is None
    raw = stored.dataset.read_batch([0, 1, 2])
    assert torch.equal(stored.preparer.eval()(dict(raw))["audio"], raw["audio"])
    stored.close()
    standardized = build_training_input(small_pair, LoaderConfig(num_workers=0, val_fraction=0.0,
                                                                 audio_normalize="standardize"), None, "cpu",
                                        frame_norm=FRAMES)
    assert standardized.audio_stats is not None
    assert not torch.equal(standardized.preparer.eval()(dict(raw))["audio"], raw["audio"])
    standardized.close()


def test_auto_workers_follow_the_cores_per_training_process(monkeypatch):
    import os

    from avsc_pipeline.dataio.loader import worker_count

    assert worker_count(0) == 0 and worker_count(3) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert worker_count(-1) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert worker_count(-1) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert worker_count(-1) == 1
