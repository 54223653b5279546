"""One training run from a features folder into a run folder: the steps `avsc-train` takes.

Each step is one library factory, composed here as timm's `train.py` composes its own: join the
process group, read the training input, build the model, cache frozen embeddings, train.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from avsc_pipeline.config import from_dict, to_dict
from avsc_pipeline.dataio.training_input import build_training_input
from avsc_pipeline.devices import amp_dtype
from avsc_pipeline.features.config import FeatureConfig
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


def train_run(features_dir: Path, run_dir: Path, sections: Dict[str, Any], *,
              given_features: Optional[dict] = None, resume: bool = False, overwrite: bool = False,
              device: str = "auto", progress: bool = True) -> Dict[str, Any]:
    """Train one model from `FEATURES_DIR/train` (+ `train-aug`) into `run_dir`.

    Args:
        features_dir: the stage-one output folder.
        run_dir: the run folder.
        sections: every resolved config section.
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
    context = join(device, sections["train"].dist_timeout_s)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        row = _train(context, Path(features_dir), Path(run_dir), dict(sections), given_features, resume,
                     overwrite, progress)
        barrier(context)  # no process leaves the group while another still uses it
        return row
    finally:
        if torch.are_deterministic_algorithms_enabled() != deterministic:
            torch.use_deterministic_algorithms(deterministic)  # a process-wide switch: leave it as found
        teardown()


def _train(context: Context, features_dir: Path, run_dir: Path, sections: Dict[str, Any],
           given_features: Optional[dict], resume: bool, overwrite: bool, progress: bool) -> Dict[str, Any]:
    train, model_config = sections["train"], sections["model"]
    configure_determinism(train.deterministic, context.device)
    rng_state.seed_everything(train.seed)
    inputs = None
    try:
        frozen_video = train.freeze_video and model_config.uses_video
        video_cached = cacheable(False, frozen_video, train, sections["batch_augment"])["video"]
        inputs = build_training_input(
            features_dir, sections["loader"], sections["batch_augment"], context.device, train.seed,
            with_video=model_config.uses_video and not video_cached, frame_norm="imagenet",
            rank=context.rank, barrier=lambda: barrier(context))
        features = to_dict(inputs.dataset.feature_config)
        check_feature_section(given_features, features, inputs.folders[0])
        sections["features"] = from_dict(FeatureConfig, features, source=f"{inputs.folders[0]}: feature config")
        # What the run read: the offline augmentation of the train-aug shards, or none.
        sections.pop("offline_augment", None)
        if len(inputs.folders) > 1:
            sections["offline_augment"] = load_index(inputs.folders[1]).get("augment_config") or {}
        check_run_dir(run_dir, sections, resume, overwrite)
        model = build_run_model(model_config, train, list(inputs.classes), features,
                                inputs.dataset.feature_config.audio_shape[0]).to(context.device)
        if context.device.type == "cuda" and train.channels_last:
            model.to(memory_format=torch.channels_last)
        inputs.preparer.set_frame_norm(model.frame_mean, model.frame_std)
        checkpoint = load_checkpoint(run_dir / LAST_NAME, map_location="cpu") if resume else None
        # Everything that can fail on bad input has run: only now is the run folder written.
        handler = None
        if context.is_main:
            start_run_dir(run_dir, sections, overwrite)
            handler = add_log_file(run_dir)
        try:
            logger.info("training the %s model on %s (%d process(es)), run folder %s", model.modality,
                        context.device, context.world_size, run_dir)
            if context.rank > 0:  # its own dropout masks from here on (rank 0 draws as a single process)
                torch.manual_seed(inputs.seed)
            caches = build_caches(model, inputs, train, sections["batch_augment"],
                                  amp_dtype(train.amp, context.device), progress and context.is_main, context)
            trainer = Trainer(sections, inputs, model, caches, run_dir, context, progress)
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
    finally:
        if inputs is not None:
            inputs.close()
