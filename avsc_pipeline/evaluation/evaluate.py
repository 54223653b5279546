"""Score a checkpoint on a folder of feature shards, as DCASE 2021 Task 1b scores systems.

:func:`evaluate_checkpoint` backs `avsc-eval`. It reads every segment of one split folder
(`FEATURES/evaluate`, `FEATURES/test`, ...) in row order through the shard loader, scores it
with the checkpoint's model (:class:`~avsc_pipeline.evaluation.runtime.Scorer`, the path that
training's validation takes too, through :func:`score_rows`) and writes into the output folder
(default `RUN_DIR/eval/<split>/`, `RUN_DIR/eval/<split>-<modality>/` with `--modality
audio|video` on a joint model, where `RUN_DIR` is the checkpoint's folder):

* `predictions.tsv`: one row per segment in the task's format (:mod:`.predictions`);
* for a split with labels, `metrics.json` (segment scores from :func:`.metrics.score`, clip
  scores from segment probabilities averaged per clip, and where they came from) and
  `confusion_matrix.png`. A split without labels (the test list, the evaluation set) gets
  predictions only.

Segment file names. Shards keep a clip's id (its audio file's stem), not its path; a clip's
audio file name is taken to be `audio/<clip_id>.wav`, as the TAU lists name them
(:func:`clip_filename`), and its segments are named by :func:`.predictions.segment_filename`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from avsc_pipeline.config import from_dict
from avsc_pipeline.dataio.config import LoaderConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import make_loader
from avsc_pipeline.dataio.samplers import EpochSampler
from avsc_pipeline.errors import ConfigMismatchError
from avsc_pipeline.evaluation import metrics
from avsc_pipeline.evaluation.predictions import atomic_output, segment_filename, write_predictions
from avsc_pipeline.evaluation.runtime import Scorer, checkpoint_config_hash, load_scorer
from avsc_pipeline.models.checkpoint import ModelArtifact
from avsc_pipeline.storage.index import load_index

logger = logging.getLogger(__name__)

PREDICTIONS_NAME = "predictions.tsv"
METRICS_NAME = "metrics.json"
CONFUSION_NAME = "confusion_matrix.png"


def clip_filename(clip_id: str) -> str:
    """The audio file name of a clip as the TAU lists give it: `audio/<clip_id>.wav`."""
    return f"audio/{clip_id}.wav"


def segment_filenames(clip_ids: Sequence[str], segments: Sequence[int]) -> List[str]:
    """The predictions-file name of each segment (see :func:`.predictions.segment_filename`).

    A clip's segment count is one more than its highest segment index among the rows given, so
    a clip cut short in stage one (video shorter than audio) is named as it was stored.

    Args:
        clip_ids: `(N,)` clip id of each segment.
        segments: `(N,)` 0-based segment index of each segment.
    """
    ids = [str(c) for c in clip_ids]
    segs = [int(s) for s in segments]
    if len(ids) != len(segs):
        raise ValueError(f"expected as many segments as clip ids ({len(ids)}), got {len(segs)}")
    counts: Dict[str, int] = {}
    for clip_id, segment in zip(ids, segs):
        counts[clip_id] = max(counts.get(clip_id, 0), segment + 1)
    return [segment_filename(clip_filename(c), s, counts[c]) for c, s in zip(ids, segs)]


def default_out_dir(ckpt_path: "str | os.PathLike[str]", split_dir: "str | os.PathLike[str]",
                    modality: Optional[str] = None) -> Path:
    """`RUN_DIR/eval/<split>` (`<split>-<modality>` for one modality of a joint model)."""
    split = Path(split_dir).resolve().name
    name = split if modality is None else f"{split}-{modality}"
    return Path(ckpt_path).resolve().parent / "eval" / name


def check_split_folder(split_dir: Path) -> None:
    """Refuse a folder that is not one split's shard folder, saying what it holds instead.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: the features root (listing the split folders it holds), or a folder of
            shards without an index.
    """
    from avsc_pipeline.storage.index import INDEX_NAME, shard_folders

    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: no such features folder")
    if (split_dir / INDEX_NAME).is_file():
        return
    splits = sorted(folder.name for folder in shard_folders(split_dir) if folder != split_dir)
    if splits:
        raise ValueError(f"{split_dir}: expected one split folder of shards, got a features folder holding "
                         f"{', '.join(splits)}; give e.g. {split_dir / splits[0]}")
    if not any(split_dir.glob("shard-*.h5")):
        raise ValueError(f"{split_dir}: expected a split folder of shards (shard-*.h5 and index.json), got none")


def open_split(split_dir: "str | os.PathLike[str]", scorer: Scorer, ckpt_path: Any) -> ShardDataset:
    """The split's shards as the checkpoint needs them: its class list and feature config.

    Raises:
        ValueError: shards made with another feature config or class list (naming the fields),
            or a folder that is not an indexed shard folder.
    """
    try:
        return ShardDataset([split_dir], with_video=scorer.with_video, classes=scorer.classes,
                            feature_config=scorer.feature_config)
    except ConfigMismatchError as err:
        raise ValueError(f"{split_dir}: features do not match checkpoint {ckpt_path}: {err}") from None


def score_rows(dataset: ShardDataset, scorer: Scorer, loader_config: LoaderConfig,
               rows: Optional[np.ndarray] = None, progress: bool = False) -> np.ndarray:
    """Probabilities of dataset rows, in the order given: how `avsc-eval` scores a split and
    how training scores its validation rows.

    Args:
        dataset: the rows, read with the scorer's `with_video`.
        scorer: the model (put in eval mode for the pass, restored afterwards).
        loader_config: batch size and workers (`drop_last` is ignored: every row is scored).
        rows: `(M,)` dataset positions; default every row in row order.
        progress: show a progress bar.

    Returns:
        `(M, C)` float64 probabilities, row i for `rows[i]`.
    """
    from tqdm import tqdm

    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    position = np.full(len(dataset), -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    sampler = EpochSampler(rows, shuffle=False, num_replicas=1, rank=0)
    loader = make_loader(dataset, sampler, loader_config, scorer.device, drop_last=False)
    probs = np.full((len(rows), len(scorer.classes)), np.nan)
    with scorer.eval_mode():
        for raw in tqdm(loader, desc="scoring", unit="batch", disable=not progress, leave=False):
            probs[position[raw["index"].numpy()]] = scorer.probabilities(raw).numpy()
    loader.release_unreferenced()
    if np.isnan(probs).any():
        raise RuntimeError(f"expected every row scored, got {int(np.isnan(probs).any(axis=1).sum())} unscored")
    return probs


def loader_config_of(artifact: ModelArtifact, batch_size: Optional[int], workers: Optional[int],
                     source: str) -> LoaderConfig:
    """The checkpoint's `loader:` section (the training machine's settings) with this run's
    batch size and workers; every row is read once, in order."""
    section = artifact.config.get("loader") or {}
    config = from_dict(LoaderConfig, dict(section), source=f"{source}: config.loader")
    changes: Dict[str, Any] = {"drop_last": False, "persistent_workers": False}
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if workers is not None:
        changes["num_workers"] = workers
    try:
        return dataclasses.replace(config, **changes)
    except ValueError as err:
        raise ValueError(f"expected batch size >= 1 and workers >= 0: {err}") from None


def labeled_metrics(probs: np.ndarray, labels: np.ndarray, clip_ids: np.ndarray,
                    classes: Sequence[str]) -> Dict[str, Any]:
    """Segment scores (:func:`.metrics.score`) of the labeled rows, plus clip scores.

    Args:
        probs: `(N, C)` float probabilities.
        labels: `(N,)` int class indices, -1 for rows without a label (left out).
        clip_ids: `(N,)` str clip of each row.
        classes: the C class names.

    Returns:
        The dict of :func:`.metrics.score` plus `clip_accuracy`, `clip_log_loss`,
        `clip_class_mean_accuracy`, `clip_class_mean_log_loss`, `n_clips` and `n_unlabeled`.
    """
    known = labels >= 0
    out = metrics.score(labels[known], probs[known], classes)
    ids, clip_probs, clip_labels = metrics.aggregate_clips(clip_ids[known], probs[known], labels[known])
    clips = metrics.score(clip_labels, clip_probs, classes)
    out.update(
        clip_accuracy=clips["accuracy"], clip_log_loss=clips["log_loss"],
        clip_class_mean_accuracy=clips["class_mean_accuracy"], clip_class_mean_log_loss=clips["class_mean_log_loss"],
        n_clips=len(ids), n_unlabeled=int((~known).sum()),
    )
    return out


def evaluate_checkpoint(ckpt_path: "str | os.PathLike[str]", split_dir: "str | os.PathLike[str]",
                        out_dir: "str | os.PathLike[str] | None" = None, batch_size: Optional[int] = None,
                        device: "str | torch.device" = "auto", modality: Optional[str] = None, progress: bool = True,
                        workers: Optional[int] = None) -> Dict[str, Any]:
    """Score a checkpoint on one split folder and write predictions (and metrics) files.

    Args:
        ckpt_path: the checkpoint (`RUN_DIR/best.pt`).
        split_dir: a shard folder with an `index.json`, made with the checkpoint's feature
            config and class list.
        out_dir: where to write; default :func:`default_out_dir`.
        batch_size: segments per batch; default the checkpoint's `loader.batch_size`.
        device: `auto`, `cpu`, `cuda`, `cuda:N`.
        modality: None (the model's own), or `audio`/`video` for one modality of a joint
            checkpoint (the other embedding replaced by its training-set mean).
        progress: show a progress bar.
        workers: loader worker processes; default the checkpoint's `loader.num_workers`.

    Returns:
        For a split with labels, the dict written to `metrics.json` plus `labeled: True` and
        `files`; without labels, `labeled: False`, `n_segments`, `segments_per_s`, `split`,
        `checkpoint` and `files` (predictions only).

    Raises:
        CheckpointError: an unreadable checkpoint (one line naming it).
        ValueError: features or classes that do not match the checkpoint, naming the fields; a
            modality the checkpoint cannot give.
        FileNotFoundError: a split folder without an index.
    """
    split_dir = Path(split_dir)
    check_split_folder(split_dir)
    scorer, artifact = load_scorer(ckpt_path, device, modality)
    loader_config = loader_config_of(artifact, batch_size, workers, str(ckpt_path))
    with open_split(split_dir, scorer, ckpt_path) as dataset:
        started = time.perf_counter()
        probs = score_rows(dataset, scorer, loader_config, progress=progress)
        seconds = time.perf_counter() - started
        labels, clip_ids, segments = dataset.labels, dataset.clip_ids, dataset.segments
    own = scorer.modality == scorer.model.modality
    out = Path(out_dir) if out_dir is not None else default_out_dir(ckpt_path, split_dir, None if own else modality)
    out.mkdir(parents=True, exist_ok=True)
    files = {PREDICTIONS_NAME: write_predictions(out / PREDICTIONS_NAME, segment_filenames(clip_ids, segments),
                                                 probs, scorer.classes)}
    info = {
        "checkpoint": str(Path(ckpt_path).resolve()), "checkpoint_config_hash": checkpoint_config_hash(artifact),
        "features_config_hash": load_index(split_dir)["config_hash"], "split": split_dir.resolve().name,
        "run": Path(ckpt_path).resolve().parent.name, "modality": scorer.modality,
        "model_modality": scorer.model.modality, "epoch": artifact.epoch, "n_segments": len(probs),
        "temperature": scorer.temperature,
        "seconds": seconds, "segments_per_s": len(probs) / seconds if seconds > 0 else None,
    }
    logger.info("%s: %d segments scored in %.1f s (%.0f segments/s)", split_dir, len(probs), seconds,
                info["segments_per_s"] or 0.0)
    if not (labels >= 0).any():
        logger.info("%s: no labels; wrote predictions only, no metrics computed", split_dir)
        return {**info, "labeled": False, "files": files}
    result = {**labeled_metrics(probs, labels, clip_ids, scorer.classes), **info}
    with atomic_output(out / METRICS_NAME) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    files[METRICS_NAME] = out / METRICS_NAME
    files[CONFUSION_NAME] = _confusion_figure(result, out / CONFUSION_NAME)
    return {**result, "labeled": True, "files": files}


def _confusion_figure(result: Dict[str, Any], path: Path) -> Path:
    from avsc_pipeline.evaluation.plots import plot_confusion_matrix

    title = (f"{result['run']}, {result['split']} ({result['modality']}): "
             f"accuracy {100 * result['accuracy']:.1f} %")
    return plot_confusion_matrix(np.asarray(result["confusion_matrix"]), result["classes"], path, title=title)
