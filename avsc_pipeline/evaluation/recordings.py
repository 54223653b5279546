"""Classify raw recordings with a checkpoint, without running stage one by hand.

:func:`predict_files` backs `avsc-predict`. Each recording (a WAV file and, for a model that
uses video, its MP4) goes through stage one's own clip code
(:func:`avsc_pipeline.features.extract.extract_clip`) under the checkpoint's feature config, so
its audio features (in the stored dtype) and uint8 frames are bit for bit what a shard would
hold, and then through the :class:`~avsc_pipeline.evaluation.scoring.Scorer` that `avsc-eval`
uses: a segment's probabilities equal `avsc-eval`'s for its shard row (up to the float
rounding of a different batch composition). Several checkpoints (or an ensemble file) score as
one :class:`~avsc_pipeline.evaluation.ensemble.Ensemble`, each recording's features extracted
once for all of them; test-time augmentation and calibration work as in `avsc-eval`.

A recording that cannot be read fails on its own, with a message naming the file; the others
are still predicted. An audio-only checkpoint ignores videos; a checkpoint that uses video
needs one for every recording (or `modality="audio"` on a joint checkpoint).

:func:`write_prediction_files` writes the per-segment rows in exactly `avsc-eval`'s
`predictions.tsv` format and file names, and the per-clip rows (segment probabilities pooled:
their mean, or with `clip_pool="mean-log-prob"` the softmax of their mean log) in the same
format beside them (`NAME.clips.tsv`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from avsc_pipeline.evaluation.loading import load_model
from avsc_pipeline.evaluation.metrics import check_clip_pool, pool_segments
from avsc_pipeline.evaluation.output_file import segment_filename, write_predictions
from avsc_pipeline.evaluation.scoring import ScorerLike
from avsc_pipeline.corpus.clips import Clip
from avsc_pipeline.corpus.tau import identifier_from_name

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Recording = Union[Clip, Tuple[PathLike, Optional[PathLike]]]


@dataclass
class ClipPrediction:
    """The outcome for one recording.

    Attributes:
        clip: the recording (clip id = the audio file's stem).
        probs: `(K, C)` float64 probabilities of its K one-second segments, or None when it failed.
        error: why it failed (naming the file), or None.
        dropped: trailing segments left out because the video is shorter than the audio.
        clip_pool: how :attr:`clip_probs` pools the segments (`mean-prob` or `mean-log-prob`).
    """

    clip: Clip
    probs: Optional[np.ndarray] = None
    error: Optional[str] = None
    dropped: int = 0
    clip_pool: str = "mean-prob"

    @property
    def ok(self) -> bool:
        """Whether the recording was predicted."""
        return self.error is None

    @property
    def clip_probs(self) -> np.ndarray:
        """`(C,)` float64: the segment probabilities pooled by :attr:`clip_pool` (the clip-level
        prediction, :func:`.metrics.pool_segments`)."""
        if self.probs is None:
            raise ValueError(f"{self.clip.audio}: no probabilities ({self.error})")
        return pool_segments(self.probs, self.clip_pool)


@dataclass
class PredictionResult:
    """Every recording's outcome, in input order, and the class names of the columns."""

    classes: List[str]
    clips: List[ClipPrediction]

    @property
    def failed(self) -> List[ClipPrediction]:
        """The recordings that could not be predicted."""
        return [c for c in self.clips if not c.ok]


def as_clips(inputs: Iterable[Recording]) -> List[Clip]:
    """Clips from `Clip` records or `(audio, video or None)` pairs (clip id = audio stem).

    Raises:
        ValueError: a pair of the wrong shape, or two recordings with one clip id (their
            prediction rows would share a file name).
    """
    clips: List[Clip] = []
    for number, item in enumerate(inputs, start=1):
        if isinstance(item, Clip):
            clips.append(item)
            continue
        if not isinstance(item, (tuple, list)) or len(item) != 2 or item[0] is None:
            raise ValueError(f"expected a Clip or an (audio, video or None) pair, got {item!r}")
        audio = Path(item[0])
        video = None if item[1] is None else Path(item[1])
        clips.append(Clip(audio.stem, audio, video, None, identifier_from_name(audio.stem), f"input {number}"))
    seen = {}
    for clip in clips:
        if clip.clip_id in seen:
            raise ValueError(f"expected distinct audio file stems, got {clip.clip_id!r} twice "
                             f"({seen[clip.clip_id]} and {clip.audio})")
        seen[clip.clip_id] = clip.audio
    return clips


def predict_files(ckpt_path: "PathLike | Sequence[PathLike]", inputs: Iterable[Recording],
                  device: "str | torch.device" = "auto", jobs: int = 1, batch_size: int = 64,
                  modality: Optional[str] = None, progress: bool = False, calibrated: bool = True,
                  weights: Optional[Sequence[float]] = None, mean: Optional[str] = None, tta: Sequence[str] = (),
                  clip_pool: str = "mean-prob") -> PredictionResult:
    """Predict the scene of raw recordings.

    Args:
        ckpt_path: the checkpoint; or several (an ensemble), or an ensemble file.
        inputs: `Clip` records (e.g. from :func:`avsc_pipeline.corpus.manifest.load_manifest`) or
            `(audio path, video path or None)` pairs.
        device: `auto`, `cpu`, `cuda`, `cuda:N`.
        jobs: processes extracting features (joblib's loky backend, as stage one).
        batch_size: segments per model batch.
        modality: None (the model's own), or `audio`/`video` for one modality of a joint checkpoint.
        progress: show a progress bar while scoring.
        calibrated: apply the stored temperatures (False: `--no-calibration`).
        weights: one weight per checkpoint of an ensemble; None for equal weights.
        mean: `arithmetic` (default) or `geometric` combination of an ensemble.
        tta: test-time transforms (:data:`.tta.TTA_TRANSFORMS`).
        clip_pool: how each clip's segments are pooled (:data:`.metrics.CLIP_POOLS`).

    Returns:
        One :class:`ClipPrediction` per input, in order; failed ones carry the error (for the
        caller to report: they are not logged here).

    Raises:
        CheckpointError: an unreadable checkpoint.
        ValueError: bad arguments, checkpoints that do not match each other, or a modality the
            checkpoint cannot give.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"expected jobs >= 1, got {jobs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size!r}")
    check_clip_pool(clip_pool)
    clips = as_clips(inputs)
    paths = [ckpt_path] if isinstance(ckpt_path, (str, os.PathLike)) else list(ckpt_path)
    scorer = load_model(paths, device, modality, calibrated, weights, mean, tta).scorer
    outcomes = [ClipPrediction(clip, clip_pool=clip_pool) for clip in clips]
    if scorer.with_video:
        for outcome in outcomes:
            if outcome.clip.video is None:
                outcome.error = (f"{outcome.clip.audio}: no video given, but the {scorer.modality!r} model uses "
                                 f"video (give AUDIO VIDEO, or --modality audio for a joint checkpoint)")
    todo = [o for o in outcomes if o.ok]
    segments = _extract(scorer, todo, jobs)
    _score(scorer, todo, segments, batch_size, progress)
    logger.info("%d of %d recordings predicted", sum(o.ok for o in outcomes), len(outcomes))
    return PredictionResult(scorer.classes, outcomes)


def _extract(scorer: ScorerLike, outcomes: Sequence[ClipPrediction], jobs: int) -> List[Tuple[np.ndarray, ...]]:
    """Stage-one features of each clip: `(audio (K, 6, F, T) stored dtype, video (K, 2, 3, S, S)
    uint8 or None)`; a clip that fails gets its error set and an empty entry."""
    from avsc_pipeline.features.extract import extract_clip
    from avsc_pipeline.features.shard_engine import run_ordered

    work = partial(extract_clip, config=scorer.feature_config, with_video=scorer.with_video)
    out: List[Tuple[np.ndarray, ...]] = []
    for outcome, result in zip(outcomes, run_ordered(work, [o.clip for o in outcomes], jobs, "loky", None)):
        if result.skipped is not None:
            path, reason = result.skipped
            outcome.error = f"{path}: {reason}"
            out.append(())
            continue
        outcome.dropped = result.dropped
        if result.dropped:
            logger.warning("%s: video shorter than audio: the last %d segment(s) left out",
                           outcome.clip.video, result.dropped)
        out.append((result.audio, result.video))
    return out


def _score(scorer: ScorerLike, outcomes: Sequence[ClipPrediction], segments: Sequence[Tuple[np.ndarray, ...]],
           batch_size: int, progress: bool) -> None:
    """Score every extracted segment in batches of `batch_size` and hand each clip its rows."""
    from tqdm import tqdm

    kept = [(o, s) for o, s in zip(outcomes, segments) if o.ok]
    if not kept:
        return
    audio = np.concatenate([s[0] for _, s in kept])
    video = np.concatenate([s[1] for _, s in kept]) if scorer.with_video else None
    probs = []
    for start in tqdm(range(0, len(audio), batch_size), desc="scoring", unit="batch", disable=not progress):
        batch = {"audio": torch.from_numpy(audio[start:start + batch_size])}
        if video is not None:
            batch["video"] = torch.from_numpy(video[start:start + batch_size])
        probs.append(scorer.probabilities(batch).numpy())
    rows = np.concatenate(probs)
    start = 0
    for outcome, (clip_audio, _) in kept:
        outcome.probs = rows[start:start + len(clip_audio)]
        start += len(clip_audio)


def clips_path(path: PathLike) -> Path:
    """The per-clip file beside a per-segment predictions file: `preds.tsv` -> `preds.clips.tsv`."""
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.clips.tsv")


def write_prediction_files(result: PredictionResult, path: PathLike) -> Tuple[Path, Path]:
    """Write the predicted recordings' segment rows to `path` and clip rows beside it.

    Rows are named after each recording's audio file as it was given (its path, or an MP4's
    when it carries the sound), segments by :func:`.output_file.segment_filename`, as
    `avsc-eval` names a data set's files; clip rows carry the file name itself.

    Returns:
        The per-segment file and the per-clip file (:func:`clips_path`).
    """
    done = [c for c in result.clips if c.ok]
    names, rows = [], []
    for outcome in done:
        count = len(outcome.probs)
        names += [segment_filename(outcome.clip.audio_file, k, count) for k in range(count)]
        rows.append(outcome.probs)
    width = len(result.classes)
    segment_rows = np.concatenate(rows) if rows else np.zeros((0, width))
    clip_rows = np.stack([c.clip_probs for c in done]) if done else np.zeros((0, width))
    segments_file = write_predictions(path, names, segment_rows, result.classes)
    clips_file = write_predictions(clips_path(path), [c.clip.audio_file for c in done], clip_rows,
                                   result.classes)
    return segments_file, clips_file
