"""The one builder of stage two's training input: shards, split, sampler, statistics, preparer.

:func:`build_training_input` is what `avsc-train`, the README's example and `bench/bench_train.py`
call; the trainer receives what it returns, the way timm's `train.py` composes its factories::

    classes, features = shard_info("data/features", loader)   # what the model is built for
    model = build_model(model_config, len(classes), features.audio_shape[0])
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
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.sections.loading import BatchAugmentConfig, LoaderConfig
from avsc_pipeline.sections.train import VALIDATION_LOCATIONS
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import ShardLoader, make_loader
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.samplers import EpochSampler, Split, split_items
from avsc_pipeline.dataio.stats import AudioStats, ensure_audio_stats
from avsc_pipeline.storage.index import INDEX_NAME
from avsc_pipeline.storage.shards import augmented_split

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
#: The offline augmentation's mixing variant (`storage.shards.AUGMENT_VARIANTS`): its rows hold a
#: partner clip's audio.
MIX_VARIANT = "mix"


@dataclass
class TrainingInput:
    """Everything stage two reads.

    Attributes:
        folders: the shard folders read (`train`, then `train-aug` when present and used, then
            the selection split's folder when `train.validation` names one).
        dataset: rows of those folders; frames only when `with_video`.
        split: the location-disjoint train / validation positions (unlabeled rows in neither;
            see :func:`split_rows`).
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
        hint = "run `avsc-features extract ... --split train` first"
        if (Path(features_dir) / INDEX_NAME).is_file():  # a split folder: FEATURES_DIR/train given
            hint = f"{features_dir} is itself a split folder: give its parent, {Path(features_dir).resolve().parent}"
        raise ValueError(f"{features_dir}: expected stage-one shards in {train} (with {INDEX_NAME}); {hint}")
    folders = [train]
    augmented = Path(features_dir) / augmented_split(TRAIN_SPLIT)
    if loader.aug_fraction > 0 and (augmented / INDEX_NAME).is_file():
        folders.append(augmented)
    elif loader.aug_fraction > 0:
        logger.info("%s: no offline-augmented shards; training on the originals only", augmented)
    return folders


def shard_info(features_dir: "str | Path", loader: LoaderConfig) -> Tuple[List[str], FeatureConfig]:
    """The class list and feature config of the training shards, read before the model is built
    (the model is built for them, and the preparer then from the model).

    Raises:
        ValueError: no training shards, or folders that disagree (named).
    """
    dataset = ShardDataset(training_folders(features_dir, loader), with_video=False)
    try:
        return list(dataset.classes), dataset.feature_config
    finally:
        dataset.close()


def build_training_input(features_dir: "str | Path", loader: LoaderConfig, augment: Optional[BatchAugmentConfig],
                         device: "torch.device | str", seed: int = 0, with_video: bool = True,
                         frame_norm: Tuple[Sequence[float], Sequence[float]] = (), rank: int = 0,
                         barrier: Callable[[], None] = lambda: None,
                         validation: str = VALIDATION_LOCATIONS) -> TrainingInput:
    """Everything stage two reads, from the features folder and the loader and augmentation settings.

    Args:
        features_dir: stage one's output folder (`train`, optionally `train-aug`).
        loader: the `loader:` section.
        augment: the `batch_augment:` section (None for none).
        device: the training device (the preparer is moved there).
        seed: the run seed: the epoch order (the same on every process, each taking its share)
            and, combined with `rank`, this process's augmentation streams and workers.
        with_video: read frames with every batch.
        frame_norm: the frames' `(mean, std)` read from the model that consumes them,
            `(model.frame_mean, model.frame_std)`.
        rank: this process's rank; rank 0 computes the audio statistics when they are missing...
        barrier: ...while the others wait here for them.
        validation: `train.validation`: `locations` (hold out `loader.val_fraction` of the
            training locations) or the name of the features split folder to select on.

    Raises:
        ValueError: no training shards, no rows, no training rows after the split, or a
            selection split that is missing, unlabeled or made with other features.
    """
    device = torch.device(device)
    folders = training_folders(features_dir, loader)
    selection = selection_folder(features_dir, validation)
    dataset = ShardDataset(folders + ([selection] if selection is not None else []), with_video=with_video)
    if selection is not None:
        folders = folders + [selection]
    if len(dataset) == 0:
        raise ValueError(f"{folders[0]}: no rows to train on")
    split = split_rows(dataset, loader, selection is not None)
    if len(split.train) == 0:
        raise ValueError(f"{folders[0]}: no labeled training rows after holding out validation locations")
    if selection is not None and len(split.validation) == 0:
        raise ValueError(f"{selection}: expected labeled rows to select on (train.validation), got none")
    stats = None
    if loader.audio_normalize == "standardize" and dataset.feature_config.audio == "waveform":
        raise ValueError(f"{folders[0]}: expected loader.audio_normalize none for waveform shards (the on-device "
                         "log-mel front end's dB go in as they come; the statistics are of stored log-mel features), "
                         "got standardize")
    if loader.audio_normalize == "standardize":
        if rank == 0:
            ensure_audio_stats(folders[0], loader.audio_stats, progress=False)
        barrier()
        stats = ensure_audio_stats(folders[0], loader.audio_stats)
    sampler = EpochSampler(split.train, split.augmented, loader.aug_fraction, shuffle=True, seed=seed)
    local_seed = process_seed(seed, rank)
    preparer = BatchPreparer(len(dataset.classes), stats, frame_norm, augment, local_seed,
                             features=dataset.feature_config).to(device)
    logger.info("data: %d training rows (+%d augmented), %d validation rows from %d held-out locations%s",
                len(split.train), len(split.augmented), len(split.validation), len(split.held_out),
                f" (the {selection.name} split)" if selection is not None else "")
    return TrainingInput(folders, dataset, split, sampler, stats, preparer, loader, device, local_seed)


def selection_folder(features_dir: "str | Path", validation: str) -> Optional[Path]:
    """The features split folder `best.pt` is selected on (`train.validation`), or None for the
    held-out share of the training locations (`locations`).

    Raises:
        ValueError: a training folder named, or a folder without shards and index.
    """
    if validation == VALIDATION_LOCATIONS:
        return None
    if validation in (TRAIN_SPLIT, augmented_split(TRAIN_SPLIT)):
        raise ValueError(f"expected train.validation `{VALIDATION_LOCATIONS}` or a split folder other than the "
                         f"training folders, got {validation!r}")
    folder = Path(features_dir) / validation
    if not (folder / INDEX_NAME).is_file():
        raise ValueError(f"{folder}: expected the shards of the split to select on (train.validation={validation}) "
                         f"with {INDEX_NAME}; run `avsc-features extract ... --split {validation}` first")
    return folder


def split_rows(dataset: ShardDataset, loader: LoaderConfig, selection: bool = False) -> Split:
    """The training, augmented and validation rows of a training dataset (:func:`split_items`).

    Unlabeled rows are in neither side (a warning counts them). An offline-mixed row trains only
    when its partner clip's location is known (the partner's `train` rows) and not held out:
    the partner's audio is in the row. A `mix` row whose shard does not record its partner
    cannot be checked and is left out (a warning counts them).

    Args:
        dataset: `train` (+ `train-aug`), then, with `selection`, the selection split's folder.
        loader: `val_fraction` and `split_seed` of the location split.
        selection: the dataset's last folder is the split to select on (its rows validate).
    """
    labels = np.asarray(dataset.labels)
    unlabeled = np.flatnonzero(labels < 0)
    if len(unlabeled):
        names = sorted({str(dataset.clip_ids[i]) for i in unlabeled[:50]})[:5]
        logger.warning("%d rows without a label (e.g. clips %s) are left out of training and validation",
                       len(unlabeled), ", ".join(names))
    chosen = dataset.folder_of == dataset.folder_of.max() if selection else None
    partners = partner_locations(dataset, chosen)
    split = split_items(dataset.identifiers, labels, dataset.is_augmented, loader.val_fraction, loader.split_seed,
                        partners, chosen)
    unknown = sum(p is None for p in partners)
    if unknown:
        logger.warning("%d offline-mixed rows do not record a partner known among the training rows: left out of "
                       "training, since their partner's location cannot be checked against validation", unknown)
    keep = labels >= 0
    split = Split(split.train[keep[split.train]], split.augmented[keep[split.augmented]],
                  split.validation[keep[split.validation]], split.held_out)
    if selection and len(np.intersect1d(dataset.identifiers[~chosen & keep], split.held_out)):
        logger.warning("the selection split shares recording locations with the training rows: those rows are "
                       "left out of training")
    return split


def partner_locations(dataset: ShardDataset, exclude: Optional[np.ndarray] = None) -> List[Optional[str]]:
    """The location of each row's offline-mixing partner: '' for none, None where unknown.

    A partner is a clip of the original training rows (`train`), so its location is theirs. A
    `mix` row is unknown when its shard has no `partner_clip` column, names none, or names a
    clip that no original training row has.

    Args:
        dataset: the training dataset.
        exclude: `(N,)` bool rows that are not training rows (a selection split's).
    """
    original = ~dataset.is_augmented if exclude is None else ~dataset.is_augmented & ~exclude
    where = dict(zip(dataset.clip_ids[original].tolist(), dataset.identifiers[original].tolist()))
    out: List[Optional[str]] = []
    for variant, partner in zip(dataset.variants.tolist(), dataset.partner_clips.tolist()):
        if partner:
            out.append(where.get(partner))
        else:
            out.append(None if variant == MIX_VARIANT else "")
    return out


def process_seed(seed: int, rank: int) -> int:
    """The seed of one process's own random streams: the run seed on rank 0 (a single process
    draws as before), a `SeedSequence([seed, rank])` draw on the others, so that no two ranks
    draw the same masks, swaps, mixup partners or dropout for the same batch position."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
