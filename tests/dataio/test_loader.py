"""The training loader: every item once per epoch through shared-memory slots, and the whole
stage-two input built from shard folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsc_pipeline.dataio.config import LoaderConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import build_training_input, make_loader
from avsc_pipeline.dataio.samplers import EpochSampler


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
    config = LoaderConfig(batch_size=4, num_workers=0, val_fraction=0.34, aug_fraction=0.5)
    setup = build_training_input([small_pair / "train", small_pair / "train-aug"], config, "cpu", seed=1)
    ids = setup.dataset.identifiers
    assert len(setup.split.validation) and not set(ids[setup.split.train]) & set(ids[setup.split.validation])
    assert (small_pair / "train" / "audio_stats.json").is_file()
    setup.train_sampler.set_epoch(0)
    batch = setup.preparer.train()(next(iter(setup.train)))
    assert batch["audio"].shape == (4, 6, 128, 39) and batch["video"].dtype == torch.float32
    assert batch["target"].shape == (4, 10)
    seen = [i for b in setup.validation for i in b["index"].tolist()]
    assert sorted(seen) == sorted(setup.split.validation.tolist())
