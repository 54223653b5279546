"""One training run from a features folder into a run folder: the steps `avsc-train` takes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from avsc_pipeline.models.checkpoint import load_checkpoint
from avsc_pipeline.training import rng_state
from avsc_pipeline.training.distributed import Context, setup, teardown
from avsc_pipeline.training.run_dir import LAST_NAME, add_log_file, check_run_dir, start_run_dir
from avsc_pipeline.training.setup import build_run_model, cacheable, check_feature_section, load_data
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


def train_run(features_dir: Path, run_dir: Path, sections: Dict[str, Any], *, given_features: Optional[dict] = None,
              resume: bool = False, overwrite: bool = False, device: str = "auto",
              progress: bool = True) -> Dict[str, Any]:
    """Train one stage from `FEATURES_DIR/train` (+ `train-aug`) into `run_dir`.

    Args:
        features_dir: the stage-one output folder.
        run_dir: the run folder.
        sections: every resolved config section.
        given_features: the config file's own `features:` section, if it has one (checked
            against the shards).
        resume: continue from `run_dir/last.pt`.
        overwrite: replace a run the folder holds.
        device: `auto`, `cpu`, `cuda` or `cuda:N`.
        progress: progress bars.

    Returns:
        The last epoch's metrics row (with `stopped_by` when a signal stopped the run).

    Raises:
        ValueError: bad input (named): features, weights, init_from, run folder, config.
    """
    context = setup(device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(context, Path(features_dir), Path(run_dir), sections, given_features, resume, overwrite,
                      progress)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # a process-wide switch: leave it as found
        teardown()


def _train(context: Context, features_dir: Path, run_dir: Path, sections: Dict[str, Any],
           given_features: Optional[dict], resume: bool, overwrite: bool, progress: bool) -> Dict[str, Any]:
    train = sections["train"]
    configure_determinism(train.deterministic, context.device)
    check_run_dir(run_dir, sections, resume, overwrite)
    rng_state.seed_everything(train.seed)
    cached = cacheable(train.freeze_audio, train.freeze_video, train, sections["batch_augment"])
    data = load_data(features_dir, sections["loader"], train.uses_video and not cached["video"], context)
    check_feature_section(given_features, data)
    model = build_run_model(sections["model"], train, data)
    checkpoint = load_checkpoint(run_dir / LAST_NAME) if resume else None
    # Everything that can fail on bad input has run: only now is the run folder written.
    handler = None
    if context.is_main:
        start_run_dir(run_dir, sections, overwrite)
        handler = add_log_file(run_dir)
    try:
        logger.info("training stage %s on %s (%d process(es)), run folder %s", train.stage, context.device,
                    context.world_size, run_dir)
        trainer = Trainer(sections, data, model, run_dir, context, progress)
        if checkpoint is not None:
            trainer.resume(checkpoint, run_dir / LAST_NAME)
        return trainer.fit()
    finally:
        if handler is not None:
            logging.getLogger("avsc_pipeline").removeHandler(handler)
            handler.close()
        data.dataset.close()
