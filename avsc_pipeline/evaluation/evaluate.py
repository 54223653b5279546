"""Score a checkpoint on a folder of feature shards, as DCASE 2021 Task 1b scores systems.

:func:`evaluate_checkpoint` backs `avsc-eval`. It reads every segment of one split folder
(`FEATURES/evaluate`, `FEATURES/test`, ...) in row order through the shard loader, scores it
with the checkpoint's model (:class:`~avsc_pipeline.evaluation.scoring.Scorer`, the path that
training's validation takes too, through :func:`score_rows`) and writes into the output folder
(default `RUN_DIR/eval/<split>/`, `RUN_DIR/eval/<split>-<modality>/` with `--modality
audio|video` on a joint model, where `RUN_DIR` is the checkpoint's folder):

* `predictions.tsv`: one row per segment in the task's format (:mod:`.output_file`);
* for a split with labels, `metrics.json` (segment scores from :func:`.metrics.score`, clip
  scores from segment probabilities pooled per clip, the log loss and expected calibration
  error with and without the temperature, and where they came from), `confusion_matrix.png`
  and `calibration.png` (a reliability diagram). A split without labels (the test list, the
  evaluation set) gets predictions only.

:func:`evaluate_model` scores what `--checkpoint` names: one checkpoint, several as an
ensemble (:mod:`.ensemble`; default folder `<first RUN_DIR>/eval/<split>-ensemble`), or an
ensemble file (`<its folder>/eval/<split>-<its stem>`), optionally with test-time augmentation
(:mod:`.tta`, folder suffix `-tta-<transforms>`) or without calibration (`-uncalibrated`).

Segment file names. Shards keep each clip's audio file as the manifest lists it (`audio_file`,
e.g. `audio/airport-lisbon-1000-40000.wav` in a TAU list, `clips/dog_1.flac` in a CSV), and its
segments are named by :func:`.output_file.segment_filename`. Shards of schema 1 kept only the
clip id: their clips are named `audio/<clip_id>.wav`, as the TAU lists name them
(:func:`clip_filename`), and a log line says so.
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

from avsc_pipeline.atomic import write_text_atomic
from avsc_pipeline.sections.loading import LoaderConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.errors import ConfigMismatchError
from avsc_pipeline.evaluation import metrics
from avsc_pipeline.evaluation.output_file import segment_filename, write_predictions
from avsc_pipeline.evaluation.loading import LoadedModel, load_model
from avsc_pipeline.evaluation.scoring import CUDA_EVAL_BATCH as _CUDA_SCORING_BATCH
from avsc_pipeline.evaluation.scoring import ScorerLike, checkpoint_config_hash, score_rows_pair, scoring_config
from avsc_pipeline.models.checkpoint import ModelArtifact
from avsc_pipeline.storage.index import folder_column, load_index

logger = logging.getLogger(__name__)

PREDICTIONS_NAME = "predictions.tsv"
METRICS_NAME = "metrics.json"
CONFUSION_NAME = "confusion_matrix.png"
CALIBRATION_NAME = "calibration.png"


def clip_filename(clip_id: str) -> str:
    """The audio file name of a clip as the TAU lists give it: `audio/<clip_id>.wav`."""
    return f"audio/{clip_id}.wav"


def segment_filenames(clip_ids: Sequence[str], segments: Sequence[int],
                      audio_files: Optional[Sequence[str]] = None) -> List[str]:
    """The predictions-file name of each segment (see :func:`.output_file.segment_filename`).

    A clip's segment count is one more than its highest segment index among the rows given, so
    a clip cut short in stage one (video shorter than audio) is named as it was stored.

    Args:
        clip_ids: `(N,)` clip id of each segment.
        segments: `(N,)` 0-based segment index of each segment.
        audio_files: `(N,)` each segment's audio file as the manifest lists it (the shards'
            `audio_file`); None for shards of schema 1, which kept none: `audio/<clip_id>.wav`.
    """
    ids = [str(c) for c in clip_ids]
    segs = [int(s) for s in segments]
    if len(ids) != len(segs):
        raise ValueError(f"expected as many segments as clip ids ({len(ids)}), got {len(segs)}")
    counts: Dict[str, int] = {}
    for clip_id, segment in zip(ids, segs):
        counts[clip_id] = max(counts.get(clip_id, 0), segment + 1)
    files = [clip_filename(c) for c in ids] if audio_files is None else [str(f) for f in audio_files]
    if len(files) != len(ids):
        raise ValueError(f"expected as many audio files as clip ids ({len(ids)}), got {len(files)}")
    return [segment_filename(f, s, counts[c]) for f, c, s in zip(files, ids, segs)]


def default_out_dir(ckpt_path: "str | os.PathLike[str]", split_dir: "str | os.PathLike[str]",
                    modality: Optional[str] = None, suffixes: Sequence[str] = ()) -> Path:
    """`RUN_DIR/eval/<split>` (`<split>-<modality>` for one modality of a joint model), each of
    `suffixes` appended with a dash (e.g. `ensemble`, `tta-swap`, `uncalibrated`)."""
    split = Path(split_dir).resolve().name
    name = "-".join([split] + ([modality] if modality is not None else []) + list(suffixes))
    return Path(ckpt_path).resolve().parent / "eval" / name


def model_out_dir(model: LoadedModel, split_dir: "str | os.PathLike[str]", modality: Optional[str]) -> Path:
    """The default output folder of what `--checkpoint` named (see the module docstring)."""
    suffixes = ([f"tta-{'-'.join(model.tta)}"] if model.tta else []) + ([] if model.calibrated else ["uncalibrated"])
    own = all(m.modality == m.model.modality for m in model.members)
    shown = None if own else modality
    if model.ensemble_file is not None:
        split = Path(split_dir).resolve().name
        name = "-".join([split, model.ensemble_file.stem] + ([shown] if shown else []) + suffixes)
        return model.ensemble_file.resolve().parent / "eval" / name
    if model.is_ensemble:
        return default_out_dir(model.sources[0], split_dir, shown, ["ensemble"] + suffixes)
    return default_out_dir(model.sources[0], split_dir, shown, suffixes)


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


def open_split(split_dir: "str | os.PathLike[str]", scorer: ScorerLike, ckpt_path: Any) -> ShardDataset:
    """The split's shards as the checkpoint needs them: its class list and feature config.

    Args:
        split_dir: the split folder.
        scorer: a :class:`Scorer`, an :class:`~.ensemble.Ensemble` or a :class:`~.tta.TTAScorer`
            (its `with_video`, `classes` and `feature_config` are used).
        ckpt_path: the checkpoint(s), named in messages.

    Raises:
        ValueError: shards made with another feature config or class list (naming the fields),
            or a folder that is not an indexed shard folder.
    """
    try:
        return ShardDataset([split_dir], with_video=scorer.with_video, classes=scorer.classes,
                            feature_config=scorer.feature_config)
    except ConfigMismatchError as err:
        raise ValueError(f"{split_dir}: features do not match checkpoint {ckpt_path}: {err}") from None


#: `avsc-eval`'s default batch on a GPU (the one scoring rule, :func:`.scoring.scoring_config`).
CUDA_EVAL_BATCH = _CUDA_SCORING_BATCH


def loader_config_of(artifact: ModelArtifact, batch_size: Optional[int], workers: Optional[int],
                     source: str, device: Optional[torch.device] = None) -> LoaderConfig:
    """The checkpoint's `loader:` section (the training machine's settings) with this run's
    batch size and workers; every row is read once, in order. Without a batch size, a CUDA
    device scores `CUDA_EVAL_BATCH` segments at a time (training's batch elsewhere)."""
    try:
        config = artifact.recipe.loader
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    try:
        config = dataclasses.replace(config, persistent_workers=False)
        return scoring_config(config, device if device is not None else "cpu", batch_size, workers)
    except ValueError as err:
        raise ValueError(f"expected batch size >= 1 and workers >= 0: {err}") from None


def labeled_metrics(probs: np.ndarray, labels: np.ndarray, clip_ids: np.ndarray,
                    classes: Sequence[str], clip_pool: str = "mean-prob") -> Dict[str, Any]:
    """Segment scores (:func:`.metrics.score`) of the labeled rows, plus clip scores.

    Args:
        probs: `(N, C)` float probabilities.
        labels: `(N,)` int class indices, -1 for rows without a label (left out).
        clip_ids: `(N,)` str clip of each row.
        classes: the C class names.
        clip_pool: how a clip's segments are pooled (:data:`.metrics.CLIP_POOLS`).

    Returns:
        The dict of :func:`.metrics.score` plus `clip_accuracy`, `clip_log_loss`,
        `clip_class_mean_accuracy`, `clip_class_mean_log_loss`, `clip_pool`, `n_clips` and
        `n_unlabeled`.
    """
    known = labels >= 0
    out = metrics.score(labels[known], probs[known], classes)
    ids, clip_probs, clip_labels = metrics.aggregate_clips(clip_ids[known], probs[known], labels[known], clip_pool)
    clips = metrics.score(clip_labels, clip_probs, classes)
    out.update(
        clip_accuracy=clips["accuracy"], clip_log_loss=clips["log_loss"],
        clip_class_mean_accuracy=clips["class_mean_accuracy"], clip_class_mean_log_loss=clips["class_mean_log_loss"],
        clip_pool=clip_pool, n_clips=len(ids), n_unlabeled=int((~known).sum()),
    )
    return out


def calibration_metrics(probs: np.ndarray, uncalibrated: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
    """Log loss without the temperature(s), and the expected calibration error with and without.

    Args:
        probs: `(N, C)` float64 probabilities as scored (calibrated unless switched off).
        uncalibrated: `(N, C)` float64 the same without any temperature.
        labels: `(N,)` int class indices, -1 for rows without a label (left out).

    Returns:
        `log_loss_uncalibrated`, `ece`, `ece_uncalibrated` and `reliability` (the bins of
        :func:`.metrics.reliability_bins` of both, as lists).
    """
    known = labels >= 0
    bins = {name: metrics.reliability_bins(labels[known], p[known])
            for name, p in (("calibrated", probs), ("uncalibrated", uncalibrated))}
    return {
        "log_loss_uncalibrated": metrics.log_loss(labels[known], uncalibrated[known]),
        "ece": metrics.expected_calibration_error(labels[known], probs[known]),
        "ece_uncalibrated": metrics.expected_calibration_error(labels[known], uncalibrated[known]),
        "reliability": {name: {k: [None if np.isnan(v) else v for v in values.tolist()] for k, values in table.items()}
                        for name, table in bins.items()},
    }


def evaluate_checkpoint(ckpt_path: "str | os.PathLike[str]", split_dir: "str | os.PathLike[str]",
                        out_dir: "str | os.PathLike[str] | None" = None, batch_size: Optional[int] = None,
                        device: "str | torch.device" = "auto", modality: Optional[str] = None, progress: bool = True,
                        workers: Optional[int] = None, calibrated: bool = True, tta: Sequence[str] = (),
                        clip_pool: str = "mean-prob") -> Dict[str, Any]:
    """Score one checkpoint (or an ensemble file) on one split folder: :func:`evaluate_model`
    of `[ckpt_path]`, which documents the arguments."""
    return evaluate_model([ckpt_path], split_dir, out_dir=out_dir, batch_size=batch_size, device=device,
                          modality=modality, progress=progress, workers=workers, calibrated=calibrated, tta=tta,
                          clip_pool=clip_pool)


def evaluate_model(checkpoints: Sequence["str | os.PathLike[str]"], split_dir: "str | os.PathLike[str]",
                   out_dir: "str | os.PathLike[str] | None" = None, batch_size: Optional[int] = None,
                   device: "str | torch.device" = "auto", modality: Optional[str] = None, progress: bool = True,
                   workers: Optional[int] = None, calibrated: bool = True, weights: Optional[Sequence[float]] = None,
                   mean: Optional[str] = None, tta: Sequence[str] = (), clip_pool: str = "mean-prob",
                   ensemble_validation: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Score a checkpoint, an ensemble of several or an ensemble file on one split folder and
    write predictions (and metrics) files.

    Args:
        checkpoints: `--checkpoint` values (`RUN_DIR/best.pt`, several, or one ensemble file).
        split_dir: a shard folder with an `index.json`, made with the checkpoints' feature
            config and class list.
        out_dir: where to write; default :func:`model_out_dir`.
        batch_size: segments per batch; default the (first) checkpoint's `loader.batch_size`.
        device: `auto`, `cpu`, `cuda`, `cuda:N`.
        modality: None (the model's own), or `audio`/`video` for one modality of a joint
            checkpoint (the other embedding replaced by its training-set mean).
        progress: show a progress bar.
        workers: loader worker processes; default the checkpoint's `loader.num_workers`.
        calibrated: apply the stored temperatures (False: `--no-calibration`).
        weights: one weight per checkpoint; None for equal weights.
        mean: `arithmetic` (default) or `geometric` combination of an ensemble.
        tta: test-time transforms (:data:`.tta.TTA_TRANSFORMS`).
        clip_pool: how clip scores pool their segments (:data:`.metrics.CLIP_POOLS`).
        ensemble_validation: the ensemble's figures on its validation rows
            (:meth:`.ensemble_weights.EnsembleCheck.to_dict`), recorded in `metrics.json`.

    Returns:
        For a split with labels, the dict written to `metrics.json` plus `labeled: True` and
        `files`; without labels, `labeled: False`, `n_segments`, `segments_per_s`, `split`,
        `checkpoint`, `members` and `files` (predictions only).

    Raises:
        CheckpointError: an unreadable checkpoint (one line naming it).
        ValueError: features or classes that do not match the checkpoint, or checkpoints that
            do not match each other, naming the fields; a modality the checkpoint cannot give;
            a weight list of the wrong length.
        FileNotFoundError: a split folder without an index.
    """
    metrics.check_clip_pool(clip_pool)
    split_dir = Path(split_dir)
    check_split_folder(split_dir)
    model = load_model(checkpoints, device, modality, calibrated, weights, mean, tta)
    loader_config = loader_config_of(model.artifacts[0], batch_size, workers, str(model.sources[0]),
                                     model.members[0].device)
    named = model.ensemble_file or ", ".join(str(s) for s in model.sources)
    with open_split(split_dir, model.scorer, named) as dataset:
        # Made once the inputs are checked and before scoring: a folder that cannot be made
        # fails now, not after the work.
        out = Path(out_dir) if out_dir is not None else model_out_dir(model, split_dir, modality)
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        probs, uncalibrated = score_rows_pair(dataset, model.scorer, loader_config, progress=progress)
        seconds = time.perf_counter() - started
        labels, clip_ids, segments = dataset.labels, dataset.clip_ids, dataset.segments
    audio_files = folder_column(split_dir, "audio_file")
    if audio_files is None:
        logger.info("%s: shards of schema 1 keep no file names; predictions name each clip audio/<clip_id>.wav",
                    split_dir)
    names = segment_filenames(clip_ids, segments, audio_files)
    files = {PREDICTIONS_NAME: write_predictions(out / PREDICTIONS_NAME, names, probs, model.scorer.classes)}
    info = {**_model_info(model), "features_dir": str(split_dir.resolve()),
            "features_config_hash": load_index(split_dir)["config_hash"],
            "split": split_dir.resolve().name, **selection_info(model.artifacts, split_dir.resolve().name),
            "n_segments": len(probs), "seconds": seconds,
            "segments_per_s": len(probs) / seconds if seconds > 0 else None}
    logger.info("%s: %d segments scored in %.1f s (%.0f segments/s)", split_dir, len(probs), seconds,
                info["segments_per_s"] or 0.0)
    if not (labels >= 0).any():
        logger.info("%s: no labels; wrote predictions only, no metrics computed", split_dir)
        return {**info, "labeled": False, "files": files}
    result = {**labeled_metrics(probs, labels, clip_ids, model.scorer.classes, clip_pool),
              **calibration_metrics(probs, uncalibrated, labels), **info}
    if ensemble_validation is not None:
        result["ensemble_validation"] = ensemble_validation
    write_text_atomic(out / METRICS_NAME, json.dumps(result, indent=2) + "\n")
    files[METRICS_NAME] = out / METRICS_NAME
    try:
        files[CONFUSION_NAME] = _confusion_figure(result, out / CONFUSION_NAME)
        files[CALIBRATION_NAME] = _calibration_figure(result, probs, uncalibrated, labels, out / CALIBRATION_NAME)
    except ImportError as err:  # a bare GPU machine may lack matplotlib: the scores are written
        logger.warning("%s: figures not drawn (%s)", out, err)
    return {**result, "labeled": True, "files": files}


#: How `metrics.json`, `avsc-report` and the ablation tables mark a figure scored on the split
#: that its checkpoint was selected on (`train.validation`).
SELECTED_ON_SCORED_SPLIT = "selected on the scored split"


def selection_info(artifacts: Sequence[ModelArtifact], split: str) -> Dict[str, Any]:
    """What each checkpoint's `best.pt` was selected on, and whether that is the scored split.

    Args:
        artifacts: the scored checkpoints (an ensemble's members).
        split: the scored split folder's name (e.g. `evaluate`).

    Returns:
        `selected_on`: each checkpoint's `train.validation` (`locations`, or the features split
        folder it was selected on; `locations` for a checkpoint written before the field
        existed), and `selected_on_scored_split`: True when one of them is `split`, the figure
        then being "selected on the scored split" (:data:`SELECTED_ON_SCORED_SPLIT`).
    """
    chosen = [artifact.recipe.train.validation for artifact in artifacts]
    return {"selected_on": chosen, "selected_on_scored_split": split in chosen}


def _model_info(model: LoadedModel) -> Dict[str, Any]:
    """Where the probabilities came from, for `metrics.json`: the checkpoint (or ensemble
    file), run, modality, epoch, temperature, members, combination, TTA and calibration."""
    first, scorer = model.members[0], model.scorer
    if model.is_ensemble:
        source = {"checkpoint": None if model.ensemble_file is None else str(model.ensemble_file.resolve()),
                  "checkpoint_config_hash": None, "run": "ensemble", "epoch": None,
                  "model_modality": scorer.modality, "temperature": model.temperature, "calibration": None}
    else:
        source = {"checkpoint": str(Path(model.sources[0]).resolve()),
                  "checkpoint_config_hash": checkpoint_config_hash(model.artifacts[0]),
                  "run": Path(model.sources[0]).resolve().parent.name, "epoch": model.artifacts[0].epoch,
                  "model_modality": first.model.modality, "temperature": first.temperature,
                  "calibration": model.artifacts[0].calibration}
    return {**source, "modality": scorer.modality, "calibrated": model.calibrated, "ensemble": model.is_ensemble,
            "members": model.members_info(), "mean": model.mean, "tta": list(model.tta)}


def _confusion_figure(result: Dict[str, Any], path: Path) -> Path:
    from avsc_pipeline.evaluation.plots import plot_confusion_matrix

    title = (f"{result['run']}, {result['split']} ({result['modality']}): "
             f"accuracy {100 * result['accuracy']:.1f} %")
    return plot_confusion_matrix(np.asarray(result["confusion_matrix"]), result["classes"], path, title=title)


def _calibration_figure(result: Dict[str, Any], probs: np.ndarray, uncalibrated: np.ndarray, labels: np.ndarray,
                        path: Path) -> Path:
    from avsc_pipeline.evaluation.plots import plot_reliability_diagram

    known = labels >= 0
    curves = {}
    if result["calibrated"]:
        curves[f"calibrated (T = {result['temperature']:.3g})"] = (probs, result["ece"])
    curves["uncalibrated"] = (uncalibrated, result["ece_uncalibrated"])
    tables = {name: {**metrics.reliability_bins(labels[known], p[known]), "ece": ece}
              for name, (p, ece) in curves.items()}
    title = (f"{result['run']}, {result['split']}: log loss {result['log_loss']:.3f} "
             f"(uncalibrated {result['log_loss_uncalibrated']:.3f})")
    return plot_reliability_diagram(tables, path, title=title)
