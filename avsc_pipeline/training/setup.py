"""What a run is made of: its data, its model (initialized and frozen as configured), caches.

Each step is one function: :func:`load_data` (shards, split, samplers, statistics),
:func:`build_run_model` (the stage's model, `init_from`, freezing), :func:`cacheable`
and :func:`compute_embeddings` (a frozen extractor whose input is not augmented is run once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from avsc_pipeline.config import config_diff, to_dict
from avsc_pipeline.dataio.config import BatchAugmentConfig, LoaderConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import make_loader
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.samplers import EpochSampler, Split, split_items
from avsc_pipeline.dataio.stats import AudioStats, ensure_audio_stats
from avsc_pipeline.models.checkpoint import load_checkpoint, strip_prefixes
from avsc_pipeline.models.classifier import SceneClassifier, build_model
from avsc_pipeline.models.config import ModelConfig
from avsc_pipeline.storage.index import INDEX_NAME
from avsc_pipeline.training.config import TrainConfig
from avsc_pipeline.training.distributed import Context, barrier

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
AUGMENTED_SPLIT = "train-aug"


@dataclass
class RunData:
    """The training shards of a run, split by location.

    Attributes:
        folders: the shard folders read (train, then train-aug when present and used).
        dataset: rows of those folders; frames only when some extractor needs them per batch.
        split: the location-disjoint train / validation positions.
        audio_stats: per-channel audio mean and std of the train folder.
    """

    folders: List[Path]
    dataset: ShardDataset
    split: Split
    audio_stats: AudioStats

    @property
    def classes(self) -> List[str]:
        """The class list of the shards."""
        return self.dataset.classes


def training_folders(features_dir: Path, loader: LoaderConfig) -> List[Path]:
    """`FEATURES_DIR/train`, plus `FEATURES_DIR/train-aug` when present and `aug_fraction > 0`.

    Raises:
        ValueError: no `train` folder with an index (an empty or foreign features folder).
    """
    train = Path(features_dir) / TRAIN_SPLIT
    if not (train / INDEX_NAME).is_file():
        raise ValueError(f"{features_dir}: expected stage-one shards in {train} (with {INDEX_NAME}); "
                         "run `avsc-features extract ... --split train` first")
    folders = [train]
    augmented = Path(features_dir) / AUGMENTED_SPLIT
    if loader.aug_fraction > 0 and (augmented / INDEX_NAME).is_file():
        folders.append(augmented)
    elif loader.aug_fraction > 0:
        logger.info("%s: no offline-augmented shards; training on the originals only", augmented)
    return folders


def load_data(features_dir: Path, loader: LoaderConfig, with_video: bool, context: Context) -> RunData:
    """The run's shards, their location-disjoint split and the audio statistics.

    The statistics are computed and stored beside the train shards on first use, by rank 0
    while the others wait.
    """
    folders = training_folders(features_dir, loader)
    dataset = ShardDataset(folders, with_video=with_video)
    if len(dataset) == 0:
        raise ValueError(f"{folders[0]}: no rows to train on")
    split = split_items(dataset.identifiers, dataset.labels, dataset.is_augmented, loader.val_fraction,
                        loader.split_seed)
    if len(split.train) == 0:
        raise ValueError(f"{folders[0]}: no training rows after holding out validation locations")
    if context.is_main:
        ensure_audio_stats(folders[0], loader.audio_stats, progress=False)
    barrier(context)
    stats = ensure_audio_stats(folders[0], loader.audio_stats)
    logger.info("data: %d training rows (+%d augmented), %d validation rows from %d held-out locations",
                len(split.train), len(split.augmented), len(split.validation), len(split.held_out))
    return RunData(folders, dataset, split, stats)


def check_feature_section(given: Optional[Dict[str, Any]], data: RunData) -> None:
    """Refuse a config file whose `features:` section differs from the shards' feature config."""
    if not given:
        return
    diff = config_diff(to_dict(data.dataset.feature_config), given)
    if diff:
        raise ValueError(f"{data.folders[0]}: the shards were made with another feature config than the "
                         f"config's features: section ({'; '.join(diff)})")


def build_run_model(model_config: ModelConfig, train: TrainConfig, data: RunData) -> SceneClassifier:
    """The stage's model: pre-trained video weights, then `init_from`, then freezing.

    Raises:
        ValueError: a missing or broken weights file or `init_from` checkpoint, or one made for
            another class list or feature config (fields named).
    """
    audio_channels = data.dataset.feature_config.audio_shape[0]
    model = build_model(model_config, train.stage, len(data.classes), audio_channels)
    if train.init_from:
        init_extractors(model, Path(train.init_from), data)
    else:
        logger.info("no init_from: extractors start from their initial or pre-trained weights")
    model.set_frozen(audio=train.freeze_audio and model.uses_audio, video=train.freeze_video and model.uses_video)
    return model


def init_extractors(model: SceneClassifier, path: Path, data: RunData) -> None:
    """Copy the extractors an earlier stage's checkpoint holds into `model` (strictly)."""
    ckpt = load_checkpoint(path)
    if list(ckpt["classes"]) != list(data.classes):
        raise ValueError(f"{path}: init_from checkpoint has classes {list(ckpt['classes'])}, "
                         f"the shards {list(data.classes)}")
    diff = config_diff(ckpt["feature_config"], to_dict(data.dataset.feature_config))
    if diff:
        raise ValueError(f"{path}: init_from checkpoint was trained on another feature config ({'; '.join(diff)})")
    state = strip_prefixes(ckpt["model"])
    loaded = []
    for part in ("audio", "video"):
        module = getattr(model, part)
        prefix = f"{part}."
        source = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if module is None:
            continue
        if not source:
            logger.info("init_from %s holds no %s extractor: it starts from its initial weights", path, part)
            continue
        try:
            module.load_state_dict(source, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: its {part} extractor does not fit this model "
                             f"({str(err).splitlines()[0]})") from None
        loaded.append(part)
    logger.info("init_from %s: %s extractor(s) loaded", path, ", ".join(loaded) or "no")


def cacheable(frozen_audio: bool, frozen_video: bool, train: TrainConfig,
              augment: BatchAugmentConfig) -> Dict[str, bool]:
    """Which frozen extractors see unaugmented input, so their embeddings can be computed once.

    Mixup mixes inputs, and an extractor is not linear, so any mixup rules caching out.
    """
    if not train.cache_embeddings or augment.mixup_fraction > 0:
        return {"audio": False, "video": False}
    audio_augmented = augment.spec_augment or augment.channel_swap_p > 0
    video_augmented = augment.video_num_ops > 0 and any(op != "Identity" for op in augment.video_ops)
    return {"audio": frozen_audio and not audio_augmented, "video": frozen_video and not video_augmented}


@torch.no_grad()
def compute_embeddings(model: SceneClassifier, part: str, data: RunData, rows: Sequence[int],
                       loader: LoaderConfig, device: torch.device, progress: bool = False) -> torch.Tensor:
    """One extractor's embeddings of the given dataset rows, in eval mode, without augmentation.

    Returns:
        `(len(dataset), D)` float32 on `device`; rows not asked for are zero.
    """
    from tqdm import tqdm

    dataset = data.dataset if part == "audio" or data.dataset.with_video else ShardDataset(data.folders, with_video=True)
    preparer = BatchPreparer(len(data.classes), data.audio_stats, (model.frame_mean, model.frame_std)).to(device).eval()
    sampler = EpochSampler(np.asarray(rows, dtype=np.int64), shuffle=False, num_replicas=1, rank=0)
    batches = make_loader(dataset, sampler, loader, device, drop_last=False)
    embed = model.embed_audio if part == "audio" else model.embed_video
    was_training = model.training
    model.eval()
    table: Optional[torch.Tensor] = None
    for raw in tqdm(batches, desc=f"caching {part} embeddings", disable=not progress, leave=False):
        batch = preparer(raw)
        values = embed(batch[part]).float()
        if table is None:
            table = torch.zeros(len(dataset), values.shape[1], device=device)
        table[batch["index"].to(device)] = values
    model.train(was_training)
    if table is None:
        raise ValueError("expected rows to embed, got none")
    return table
