"""The one builder of stage two's training input: shards, split, sampler, statistics, preparer.

:func:`build_training_input` is what `avsc-train`, the README's example and `bench/bench_train.py`
call; the trainer receives what it returns, the way timm's `train.py` composes its factories::

    inputs = build_training_input("data/features", loader, augment, device="cpu", seed=0,
                                  with_video=True, frame_norm=(model.frame_mean, model.frame_std))
    for epoch in range(epochs):
        inputs.train_sampler.set_epoch(epoch)
        for raw in inputs.loader(inputs.train_sampler):
            batch = inputs.preparer(raw)      # augmented, normalized, on the device
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import torch

from avsc_pipeline.dataio.config import BatchAugmentConfig, LoaderConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import ShardLoader, make_loader
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.samplers import EpochSampler, Split, split_items
from avsc_pipeline.dataio.stats import AudioStats, ensure_audio_stats
from avsc_pipeline.storage.index import INDEX_NAME
from avsc_pipeline.storage.shards import augmented_split

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"


@dataclass
class TrainingInput:
    """Everything stage two reads.

    Attributes:
        folders: the shard folders read (`train`, then `train-aug` when present and used).
        dataset: rows of those folders; frames only when `with_video`.
        split: the location-disjoint train / validation positions (unlabeled rows in neither).
        train_sampler: the training epochs' order (call `set_epoch`).
        audio_stats: per-channel audio mean and std of the `train` folder, when the audio is
            standardized (`loader.audio_normalize: standardize`), else None: the features go in
            as stored ([0, 1] under the authors' definition).
        preparer: batch augmentation and normalization on the device.
        loader_config: the `loader:` section.
        device: the training device.
        seed: the seed of the loader's workers.
    """

    folders: List[Path]
    dataset: ShardDataset
    split: Split
    train_sampler: EpochSampler
    audio_stats: Optional[AudioStats]
    preparer: BatchPreparer
    loader_config: LoaderConfig
    device: torch.device
    seed: int = 0

    @property
    def classes(self) -> List[str]:
        """The class list of the shards."""
        return self.dataset.classes

    def loader(self, sampler: torch.utils.data.Sampler, drop_last: Optional[bool] = None) -> ShardLoader:
        """A loader of raw batches in `sampler`'s order (e.g. the train sampler, or the rest of
        a resumed epoch)."""
        return make_loader(self.dataset, sampler, self.loader_config, self.device, self.seed, drop_last)

    def close(self) -> None:
        """Close the shard files this process opened."""
        self.dataset.close()


def training_folders(features_dir: "str | Path", loader: LoaderConfig) -> List[Path]:
    """`FEATURES_DIR/train`, plus `FEATURES_DIR/train-aug` when present and `aug_fraction > 0`.

    Raises:
        ValueError: no `train` folder with an index (an empty or foreign features folder).
    """
    train = Path(features_dir) / TRAIN_SPLIT
    if not (train / INDEX_NAME).is_file():
        raise ValueError(f"{features_dir}: expected stage-one shards in {train} (with {INDEX_NAME}); "
                         "run `avsc-features extract ... --split train` first")
    folders = [train]
    augmented = Path(features_dir) / augmented_split(TRAIN_SPLIT)
    if loader.aug_fraction > 0 and (augmented / INDEX_NAME).is_file():
        folders.append(augmented)
    elif loader.aug_fraction > 0:
        logger.info("%s: no offline-augmented shards; training on the originals only", augmented)
    return folders


def build_training_input(features_dir: "str | Path", loader: LoaderConfig, augment: Optional[BatchAugmentConfig],
                         device: "torch.device | str", seed: int = 0, with_video: bool = True,
                         frame_norm: Any = "imagenet", rank: int = 0,
                         barrier: Callable[[], None] = lambda: None) -> TrainingInput:
    """Everything stage two reads, from the features folder and the loader and augmentation settings.

    Args:
        features_dir: stage one's output folder (`train`, optionally `train-aug`).
        loader: the `loader:` section.
        augment: the `batch_augment:` section (None for none).
        device: the training device (the preparer is moved there).
        seed: the run seed: the epoch order (the same on every process, each taking its share)
            and, combined with `rank`, this process's augmentation streams and workers.
        with_video: read frames with every batch.
        frame_norm: the frames' (mean, std) as the video backbone needs them, or a name in
            `preparation.FRAME_NORMS`.
        rank: this process's rank; rank 0 computes the audio statistics when they are missing...
        barrier: ...while the others wait here for them.

    Raises:
        ValueError: no training shards, no rows, or no training rows after the split.
    """
    device = torch.device(device)
    folders = training_folders(features_dir, loader)
    dataset = ShardDataset(folders, with_video=with_video)
    if len(dataset) == 0:
        raise ValueError(f"{folders[0]}: no rows to train on")
    labels = np.asarray(dataset.labels)
    unlabeled = np.flatnonzero(labels < 0)
    if len(unlabeled):
        names = sorted({str(dataset.clip_ids[i]) for i in unlabeled[:50]})[:5]
        logger.warning("%s: %d rows without a label (e.g. clips %s) are left out of training and validation",
                       folders[0], len(unlabeled), ", ".join(names))
    split = split_items(dataset.identifiers, labels, dataset.is_augmented, loader.val_fraction, loader.split_seed)
    keep = labels >= 0
    split = Split(split.train[keep[split.train]], split.augmented[keep[split.augmented]],
                  split.validation[keep[split.validation]], split.held_out)
    if len(split.train) == 0:
        raise ValueError(f"{folders[0]}: no labeled training rows after holding out validation locations")
    stats = None
    if loader.audio_normalize == "standardize":
        if rank == 0:
            ensure_audio_stats(folders[0], loader.audio_stats, progress=False)
        barrier()
        stats = ensure_audio_stats(folders[0], loader.audio_stats)
    sampler = EpochSampler(split.train, split.augmented, loader.aug_fraction, shuffle=True, seed=seed)
    local_seed = process_seed(seed, rank)
    preparer = BatchPreparer(len(dataset.classes), stats, frame_norm, augment, local_seed).to(device)
    logger.info("data: %d training rows (+%d augmented), %d validation rows from %d held-out locations",
                len(split.train), len(split.augmented), len(split.validation), len(split.held_out))
    return TrainingInput(folders, dataset, split, sampler, stats, preparer, loader, device, local_seed)


def process_seed(seed: int, rank: int) -> int:
    """The seed of one process's own random streams: the run seed on rank 0 (a single process
    draws as before), a `SeedSequence([seed, rank])` draw on the others, so that no two ranks
    draw the same masks, swaps, mixup partners or dropout for the same batch position."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
