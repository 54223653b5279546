"""Stage one extraction: a manifest in, a folder of HDF5 shards and its index out.

Clips are planned into shards by their segment counts, read from the audio file headers
(:func:`plan_shards`); a worker turns one clip into its audio features and frame pairs
(:func:`extract_clip`); :mod:`~avsc_pipeline.features.shard_engine` writes the shards in plan
order, atomically and resumably, and refuses a rerun with other settings (`extraction.json`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from avsc_pipeline.config import config_hash, to_dict
from avsc_pipeline.features.clip_records import changed_clips, write_records
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.errors import BadClipError
from avsc_pipeline.features.shard_engine import (
    DEFAULT_SHARD_SIZE, RunSummary, ShardJob, ShardPlan, check_run_args, check_state, group_into_shards,
    hash_strings, plan_attrs, set_worker_threads, write_shards,
)
from avsc_pipeline.corpus.clips import Clip
from avsc_pipeline.corpus.manifest import label_index
from avsc_pipeline.storage.index import INDEX_NAME
from avsc_pipeline.storage.shards import ORIGINAL_VARIANT, ShardWriter, stage_one_columns

logger = logging.getLogger(__name__)

EXTRACT_STATE = "extraction.json"


@dataclass
class ClipResult:
    """What a worker returns for one clip: features, or the reason it was skipped."""

    clip: Clip
    audio: Optional[np.ndarray] = None  # (K, 6, n_mels, T), or (K, 2, W) waveforms
    video: Optional[np.ndarray] = None  # (K, 2, 3, S, S) uint8
    skipped: Optional[Tuple[str, str]] = None  # (file, reason)
    dropped: int = 0  # trailing segments without frames


def planned_samples(clip: Clip, config: FeatureConfig) -> int:
    """Samples a clip should have at `config.sample_rate`, from its header (0 when unreadable)."""
    import soundfile as sf

    try:
        info = sf.info(os.fspath(clip.audio))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return 0
    n = info.frames
    if info.samplerate != config.sample_rate:
        n = int(np.ceil(n * (float(config.sample_rate) / info.samplerate)))  # librosa.resample's length
    return n


def planned_segments(clip: Clip, config: FeatureConfig) -> int:
    """Segments a clip should give, from its audio header (0 when the header is unreadable)."""
    return planned_samples(clip, config) // config.segment_samples


def plan_shards(clips: Sequence[Clip], config: FeatureConfig, shard_size: int) -> List[ShardPlan]:
    """Group clips, in manifest order, into shards of at most `shard_size` planned segments.

    A clip longer than `shard_size` segments gets a shard of its own.
    """
    return group_into_shards(clips, [planned_segments(c, config) for c in clips], shard_size)


_EXTRACTORS: Dict[str, Any] = {}


def audio_extractor(config: FeatureConfig) -> Any:
    """This process's audio extractor for `config` (made once; holds only filter matrices):
    `(K, 2, segment_samples)` segments -> the `(K,) + config.audio_shape` rows a shard stores,
    log-mel features (:class:`~avsc_pipeline.features.audio.FastLogMel`) or, with
    `audio: waveform`, the resampled waveforms (:class:`~avsc_pipeline.features.waveform.WaveformSegments`)."""
    key = config_hash(config)
    if key not in _EXTRACTORS:
        if config.audio == "waveform":
            from avsc_pipeline.features.waveform import WaveformSegments

            _EXTRACTORS[key] = WaveformSegments(config)
        else:
            from avsc_pipeline.features.audio import FastLogMel

            _EXTRACTORS[key] = FastLogMel(config)
    return _EXTRACTORS[key]


def extract_clip(clip: Clip, config: FeatureConfig, with_video: bool, threads: Optional[int] = None) -> ClipResult:
    """Features of one clip; bad input becomes a `skipped` result, never an exception."""
    from avsc_pipeline.features.audio import load_audio, split_segments
    from avsc_pipeline.features.video import read_frame_pairs

    from avsc_pipeline.features.media_audio import is_video_file, load_track_audio

    set_worker_threads(threads)
    extractor = audio_extractor(config)
    try:
        # A video file given as the audio source: its own audio track (a lone MP4).
        audio = load_track_audio(clip.audio, config)[0] if is_video_file(clip.audio) else load_audio(clip.audio, config)
        segments = split_segments(audio, config)
        video = None
        if with_video:
            video = read_frame_pairs(clip.video, len(segments), config.frame_times, config.image_size, threads)
            if len(video) == 0:
                raise BadClipError(clip.video, "video has no frames for the first segment")
    except BadClipError as err:
        return ClipResult(clip, skipped=(err.path, err.reason))
    dropped = len(segments) - (len(video) if video is not None else len(segments))
    audio = extractor(segments[: len(segments) - dropped])
    return ClipResult(clip, audio=audio.astype(config.audio_dtype, copy=False), video=video, dropped=dropped)


def extract_split(
    clips: Sequence[Clip],
    folder: "str | os.PathLike[str]",
    config: FeatureConfig,
    classes: Sequence[str],
    *,
    jobs: int = 1,
    backend: str = "loky",
    scheduler: Optional[str] = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    part: Optional[Tuple[int, int]] = None,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Extract a manifest into `folder/shard-*.h5` and (unless `part` is set) its index.

    Args:
        clips: the manifest.
        folder: output folder for this split.
        config: feature settings, stored with every shard.
        classes: the class list; every labelled clip must be in it.
        jobs: worker processes (or dask tasks in flight).
        backend: `loky` (processes on this machine) or `dask` (a dask.distributed cluster).
        scheduler: dask scheduler address; a local cluster is started when None.
        shard_size: most segments per shard.
        part: `(I, K)`: only shards `n` with `n % K == I - 1`; no index is written.
        overwrite: replace a folder made with other settings.
        strict: fail on the first bad clip instead of skipping it.
        progress: show a progress bar.

    Raises:
        BadClipError: with `strict`, the first bad clip.
        ConfigMismatchError: the folder was made with other settings and not `overwrite`.
    """
    if not clips:
        raise ValueError("expected at least one clip in the manifest, got none")
    check_run_args(jobs, backend)
    with_video = _uses_video(clips)
    labels = {c.clip_id: label_index(c, classes) for c in clips}
    folder = Path(folder)
    plans = plan_shards(clips, config, shard_size)
    state = {"feature_config": to_dict(config), "classes": list(classes), "shard_size": shard_size,
             "plan_hash": hash_strings(p.plan_hash for p in plans), "shards": len(plans), "video": with_video}
    changed = changed_clips(folder, clips, overwrite)  # refuses added or removed clips, in words
    check_state(folder, state, overwrite, EXTRACT_STATE)
    _forget_shards_of(folder, plans, changed, part)
    write_records(folder, clips)
    job = ShardJob(
        folder=folder,
        plans=plans,
        columns=stage_one_columns(config, with_video),
        attrs=partial(plan_attrs, classes=list(classes), config=config),
        work=partial(extract_clip, config=config, with_video=with_video),
        add=partial(_add_result, labels=labels, strict=strict),
    )
    return write_shards(job, jobs=jobs, backend=backend, scheduler=scheduler, part=part, progress=progress)


def _forget_shards_of(folder: Path, plans: Sequence[ShardPlan], changed: Set[str],
                      part: Optional[Tuple[int, int]]) -> None:
    """Remove this run's finished shards that hold a changed clip (and the index), so that they
    are written again."""
    if not changed:
        return
    for plan in plans:
        if part is not None and plan.number % part[1] != part[0] - 1:
            continue
        if any(clip.clip_id in changed for clip in plan.clips) and (folder / plan.name).is_file():
            (folder / plan.name).unlink()
            (folder / INDEX_NAME).unlink(missing_ok=True)


def _uses_video(clips: Sequence[Clip]) -> bool:
    with_video = clips[0].video is not None
    for clip in clips:
        if (clip.video is not None) != with_video:
            raise ValueError(
                f"{clip.source}: expected every clip {'with' if with_video else 'without'} a video "
                f"(as in {clips[0].source}), got one {'without' if with_video else 'with'}"
            )
    return with_video


def _add_result(writer: ShardWriter, result: ClipResult, labels: Dict[str, int], strict: bool) -> None:
    clip = result.clip
    if result.skipped is not None:
        path, reason = result.skipped
        if strict:
            raise BadClipError(path, reason)
        logger.warning("%s: skipped clip %s (%s)", path, clip.clip_id, reason)
        writer.skip(clip.clip_id, path, reason)
        return
    if result.dropped:
        reason = f"video shorter than audio: dropped the last {result.dropped} segment(s)"
        if strict:
            raise BadClipError(clip.video, reason)
        logger.warning("%s: %s", clip.video, reason)
        writer.skip(clip.clip_id, str(clip.video), reason)
    k = len(result.audio)
    columns = dict(
        audio=result.audio,
        label=np.full(k, labels[clip.clip_id], dtype=np.int16),
        clip_id=[clip.clip_id] * k,
        segment=np.arange(k, dtype=np.int16),
        identifier=[clip.identifier] * k,
        variant=[ORIGINAL_VARIANT] * k,
        audio_file=[clip.audio_file] * k,
    )
    if result.video is not None:
        columns["video"] = result.video
        columns["video_file"] = [clip.video_file] * k
    writer.add(**columns)
