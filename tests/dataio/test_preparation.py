"""BatchPreparer: normalization on the device, equal to torchvision's, and augmentation in train()."""

from __future__ import annotations

import torch

from avsc_pipeline.sections.loading import BatchAugmentConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.models.video import IMAGENET_MEAN, IMAGENET_STD

IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
from avsc_pipeline.dataio.stats import compute_audio_stats


def test_batch_preparer_normalizes_like_torchvision_in_eval(small_pair):
    from torchvision.transforms.v2 import functional as F

    dataset = ShardDataset([small_pair / "train"])
    stats = compute_audio_stats(small_pair / "train")
    preparer = BatchPreparer(len(dataset.classes), stats, IMAGENET, BatchAugmentConfig(), seed=0).eval()
    batch = dataset.read_batch([0, 5, 17])
    out = preparer(batch)
    mean, std = IMAGENET
    expected = F.normalize(F.to_dtype(batch["video"], torch.float32, scale=True), list(mean), list(std))
    torch.testing.assert_close(out["video"], expected, rtol=1e-5, atol=1e-5)
    audio_mean = torch.tensor(stats.mean).view(1, 6, 1, 1)
    audio_std = torch.tensor(stats.std).view(1, 6, 1, 1)
    torch.testing.assert_close(out["audio"], (batch["audio"] - audio_mean) / audio_std, rtol=1e-5, atol=1e-5)
    assert torch.equal(out["target"], torch.nn.functional.one_hot(batch["label"], 10).float())
    train = preparer.train()(batch)
    assert not torch.equal(train["audio"], out["audio"])
    assert torch.allclose(train["target"].sum(dim=1), torch.ones(3))


def test_without_statistics_the_audio_goes_in_as_stored(small_pair):
    """`loader.audio_normalize: none` (the authors' [0, 1] features): no statistics, no change,
    and the in-place augmentations never write into the loader's batch."""
    from avsc_pipeline.sections.loading import LoaderConfig

    assert LoaderConfig().audio_normalize == "none"
    dataset = ShardDataset([small_pair / "train"])
    batch = dataset.read_batch([0, 5, 17])
    kept = batch["audio"].clone()
    preparer = BatchPreparer(len(dataset.classes), None, IMAGENET, BatchAugmentConfig(mixup_fraction=1.0), seed=0)
    out = preparer.eval()(batch)
    assert out["audio"].dtype == torch.float32 and torch.equal(out["audio"], kept)
    preparer.train()(batch)
    assert torch.equal(batch["audio"], kept)
