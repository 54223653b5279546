"""One training run from a features folder into a run folder: the steps `avsc-train` takes.

Each step is one library factory, composed here as timm's `train.py` composes its own: join the
process group, read what the shards hold, build the model for them, build the training input
with the model's own frame statistics, cache frozen embeddings, train.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from avsc_pipeline.config import from_dict, to_dict
from avsc_pipeline.dataio.training_input import TrainingInput, build_training_input, shard_info, training_folders
from avsc_pipeline.devices import amp_dtype
from avsc_pipeline.inference import Inference
from avsc_pipeline.sections import Recipe
from avsc_pipeline.sections.features import FeatureConfig, OfflineAugmentConfig
from avsc_pipeline.models.checkpoint import load_checkpoint
from avsc_pipeline.storage.index import load_index
from avsc_pipeline.training import rng_state
from avsc_pipeline.training.distributed import Context, barrier, join, teardown
from avsc_pipeline.training.embedding_cache import build_caches, cacheable
from avsc_pipeline.training.initialize import build_run_model, check_feature_section
from avsc_pipeline.training.run_dir import LAST_NAME, add_log_file, check_run_dir, start_run_dir
from avsc_pipeline.training.trainer import Trainer

logger = logging.getLogger(__name__)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic algorithms (and the cuBLAS workspace they need on CUDA) when asked."""
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def train_run(features_dir: Path, run_dir: Path, recipe: Recipe, *,
              given_features: Optional[dict] = None, resume: bool = False, overwrite: bool = False,
              device: str = "auto", progress: bool = True) -> Dict[str, Any]:
    """Train one model from `FEATURES_DIR/train` (+ `train-aug`) into `run_dir`.

    Args:
        features_dir: the stage-one output folder.
        run_dir: the run folder.
        recipe: the resolved recipe (its `features` and `offline_augment` are replaced by what
            the shards were made with before anything is written).
        given_features: the `features:` keys the config files give, if any (checked against
            the shards; the run records the shards' own feature config).
        resume: continue from `run_dir/last.pt`.
        overwrite: replace a run the folder holds.
        device: `auto`, `cpu`, `cuda` or `cuda:N`.
        progress: progress bars.

    Returns:
        The last epoch's metrics row (with `stopped_by` when a signal stopped the run) and
        `best`, the best epoch's figures.

    Raises:
        ValueError: bad input (named): features, weights, init_from, run folder, config.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"expected a Recipe, got {type(recipe).__name__}")
    context = join(device, recipe.train.dist_timeout_s)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        row = _train(context, Path(features_dir), Path(run_dir), recipe, given_features, resume, overwrite, progress)
        barrier(context)  # no process leaves the group while another still uses it
        return row
    finally:
        if torch.are_deterministic_algorithms_enabled() != deterministic:
            torch.use_deterministic_algorithms(deterministic)  # a process-wide switch: leave it as found
        teardown()


def _train(context: Context, features_dir: Path, run_dir: Path, recipe: Recipe, given_features: Optional[dict],
           resume: bool, overwrite: bool, progress: bool) -> Dict[str, Any]:
    recipe, classes = read_recipe(context, features_dir, recipe, given_features)
    check_run_dir(run_dir, recipe, resume, overwrite)
    with built_input(context, features_dir, recipe, classes) as (model, inputs):
        checkpoint = load_checkpoint(run_dir / LAST_NAME, map_location="cpu") if resume else None
        # Everything that can fail on bad input has run: only now is the run folder written.
        handler = None
        if context.is_main:
            start_run_dir(run_dir, recipe, overwrite)
            handler = add_log_file(run_dir)
        try:
            logger.info("training the %s model on %s (%d process(es)), run folder %s", model.modality,
                        context.device, context.world_size, run_dir)
            trainer = build_trainer(context, recipe, model, inputs, run_dir, progress)
            if checkpoint is not None:
                if checkpoint.resume is None:
                    raise ValueError(f"{run_dir / LAST_NAME}: holds no resume state")
                trainer.resume(checkpoint.artifact, checkpoint.resume, run_dir / LAST_NAME)
            row = trainer.fit()
            return {**row, "best": trainer.best}
        finally:
            if handler is not None:
                logging.getLogger("avsc_pipeline").removeHandler(handler)
                handler.close()


def read_recipe(context: Context, features_dir: Path, recipe: Recipe,
                given_features: Optional[dict]) -> Tuple[Recipe, List[str]]:
    """Seed the process and read what the shards hold: the recipe as the run reads it (its
    `features` are the shards' feature config) and the class list."""
    configure_determinism(recipe.train.deterministic, context.device)
    rng_state.seed_everything(recipe.train.seed)
    classes, shard_features = shard_info(features_dir, recipe.loader)
    return _as_read(recipe, features_dir, shard_features, given_features), classes


@contextlib.contextmanager
def built_input(context: Context, features_dir: Path, recipe: Recipe,
                classes: List[str]) -> Iterator[Tuple[Any, TrainingInput]]:
    """The run's model on its device, built for the shards (`recipe.features`, from
    :func:`read_recipe`), then its training input (the preparer normalizing frames with the
    model's own statistics); the input is closed on leaving."""
    train, model_config, shard_features = recipe.train, recipe.model, recipe.features
    model = build_run_model(model_config, train, classes, to_dict(shard_features),
                            shard_features.audio_shape[0]).to(context.device)
    inputs = None
    try:
        frozen_video = train.freeze_video and model_config.uses_video
        video_cached = cacheable(False, frozen_video, train, recipe.batch_augment)["video"]
        inputs = build_training_input(
            features_dir, recipe.loader, recipe.batch_augment, context.device, train.seed,
            with_video=model_config.uses_video and not video_cached, frame_norm=(model.frame_mean, model.frame_std),
            rank=context.rank, barrier=lambda: barrier(context), validation=train.validation)
        yield model, inputs
    finally:
        if inputs is not None:
            inputs.close()


def build_trainer(context: Context, recipe: Recipe, model: Any, inputs: TrainingInput, run_dir: Path,
                  progress: bool, caches: Optional[Dict[str, torch.Tensor]] = None) -> Trainer:
    """The run's forward path, its embedding caches (computed here unless `caches` are given,
    as the estimate's stand-ins are) and the :class:`Trainer` over them."""
    train = recipe.train
    if context.rank > 0:  # its own dropout masks from here on (rank 0 draws as a single process)
        torch.manual_seed(inputs.seed)
    inference = Inference(model, inputs.preparer, context.device, amp_dtype(train.amp, context.device),
                          channels_last=train.channels_last)
    if caches is None:
        caches = build_caches(inference, inputs, train, recipe.batch_augment, progress and context.is_main, context)
    return Trainer(recipe, inputs, inference, caches, run_dir, context, progress)


def _as_read(recipe: Recipe, features_dir: Path, shard_features: FeatureConfig,
             given_features: Optional[dict]) -> Recipe:
    """The recipe with what the run reads: the shards' feature config (checked against the
    `features:` keys the config files give) and the offline augmentation of the `train-aug`
    shards it reads, or None."""
    folders = training_folders(features_dir, recipe.loader)
    check_feature_section(given_features, to_dict(shard_features), folders[0])
    offline = None
    if len(folders) > 1:
        stored = load_index(folders[1]).get("augment_config")
        offline = from_dict(OfflineAugmentConfig, stored, source=f"{folders[1]}: augment config") if stored else None
    return recipe.replace(features=shard_features, offline_augment=offline)
