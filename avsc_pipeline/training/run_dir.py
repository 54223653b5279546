"""The run folder: its resolved config, per-epoch metrics, log file, curves and checkpoints.

```
RUN_DIR/config.yaml    every section, resolved (`features:` is the shards' feature config)
RUN_DIR/metrics.csv    one row per epoch (see METRIC_COLUMNS; `best` marks best.pt's epoch)
RUN_DIR/curves.png     loss, accuracy and learning-rate curves
RUN_DIR/train.log      the log
RUN_DIR/last.pt        written every epoch and on SIGINT/SIGTERM (resume from it)
RUN_DIR/best.pt        the epoch with the best validation log loss
```
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from avsc_pipeline.atomic import atomic_open, atomic_path
from avsc_pipeline.config import config_diff, dump_yaml, load_yaml, to_dict
from avsc_pipeline.sections import Recipe

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.csv"
CURVES_NAME = "curves.png"
LOG_NAME = "train.log"
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
RUN_FILES = (CONFIG_NAME, METRICS_NAME, CURVES_NAME, LOG_NAME, LAST_NAME, BEST_NAME)
# The sections that decide what a run trains; a run folder made with others is refused.
RUN_SECTIONS = ("model", "train", "batch_augment", "loader")
# The batch augmentation that acts on audio features only (the rest but `video_*` acts on both).
AUDIO_AUGMENT_KEYS = ("spec_augment", "time_masks", "freq_masks", "mask_per_channel", "max_mask_fraction",
                      "mask_fill", "channel_swap_p")
# Keys that a resumed run may change: more epochs extend a finished run; live curves may be
# switched on or off (they change nothing trained).
RESUMABLE_KEYS = ("train.epochs", "train.tensorboard", "train.tensorboard_every")
# `lr` is the rate of the epoch's first optimizer step, `lr_last` of its last one.
METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_accuracy", "val_log_loss", "best",
                  "lr", "lr_last", "samples_per_s", "data_wait_fraction", "seconds")


def check_run_dir(run_dir: Path, recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Refuse to start in a folder that holds another run, or to resume one that is not there.

    Args:
        run_dir: the run folder (may not exist yet).
        recipe: this run's resolved recipe.
        resume: continue from `last.pt`.
        overwrite: replace whatever run the folder holds.

    Raises:
        ValueError: the folder was made with another config (differing fields named), holds a
            run and neither `resume` nor `overwrite` is given, or `resume` finds no `last.pt`.
    """
    config_path, last = run_dir / CONFIG_NAME, run_dir / LAST_NAME
    if overwrite:
        if resume:
            raise ValueError("expected at most one of --resume and --overwrite, got both")
        return
    if resume and not last.is_file():
        raise ValueError(f"{last}: nothing to resume (no last.pt in {run_dir})")
    if config_path.is_file():
        diff = run_config_diff(load_yaml(config_path), recipe)
        if diff:
            remedy = ("resume with the run's own config (give no --config, or the same files)" if resume
                      else "use another RUN_DIR or --overwrite")
            raise ValueError(f"{config_path}: this run folder was made with another config ({'; '.join(diff)}); "
                             f"{remedy}")
    if not resume and (last.is_file() or (run_dir / METRICS_NAME).is_file()):
        raise ValueError(f"{run_dir}: already holds a run; --resume continues it, --overwrite starts again")


def run_config_diff(saved: Dict[str, Any], recipe: Recipe) -> List[str]:
    """The fields of the run-defining sections that differ, as `section.field: old != new`,
    leaving out the fields this run's model never reads (:func:`unused_keys`): an audio run
    resumes whatever `model.video_weights` says now."""
    lines = []
    ignored = set(RESUMABLE_KEYS) | unused_keys(recipe)
    new_sections = recipe.to_dict()
    for name in RUN_SECTIONS:
        new = new_sections.get(name, {})
        lines += [f"{name}.{line}" for line in config_diff(saved.get(name) or {}, new)
                  if f"{name}.{line.split(':')[0]}" not in ignored]
    return lines


def unused_keys(recipe: Recipe) -> set:
    """`section.field` names the run's model and training never read: the model fields of the
    other modality, and the batch augmentation of a modality the model does not see."""
    keys = {f"model.{name}" for name in recipe.model.unused_fields()}
    augment = to_dict(recipe.batch_augment)
    if not recipe.model.uses_video:
        keys |= {f"batch_augment.{name}" for name in augment if name.startswith("video_")}
    if not recipe.model.uses_audio:
        keys |= {f"batch_augment.{name}" for name in AUDIO_AUGMENT_KEYS}
    return keys


def start_run_dir(run_dir: Path, recipe: Recipe, overwrite: bool) -> None:
    """Create the folder (clearing a previous run's files with `overwrite`) and write config.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_file():
                path.unlink()
        shutil.rmtree(run_dir / "eval", ignore_errors=True)
    with atomic_path(run_dir / CONFIG_NAME) as tmp:
        dump_yaml(recipe.to_dict(), tmp)


def write_metrics(rows: Sequence[Dict[str, Any]], path: Path, best_epoch: Optional[int] = None) -> None:
    """Write every epoch's row to `path` atomically (a resumed run rewrites the file whole);
    the `best` column is 1 on `best_epoch` (best.pt's), else 0."""
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            row = {**row, "best": int(row.get("epoch") == best_epoch)}
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})


def add_log_file(run_dir: Path) -> logging.Handler:
    """Copy the package's log records into RUN_DIR/train.log (appending on resume)."""
    handler = logging.FileHandler(run_dir / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger("avsc_pipeline").addHandler(handler)
    return handler
