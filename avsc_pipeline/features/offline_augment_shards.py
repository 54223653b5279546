"""Offline augmentation: a manifest and its stage-one shards in, `OUT/<split>-aug/` shards out.

For each clip of the manifest that has rows in the stage-one folder `OUT/<split>`, and for each
operation and copy of the :class:`OfflineAugmentConfig`, the augmented waveform is made from the
clip's audio file, cut into segments and turned into the same stage-one audio features. Rows
carry the original clip's id, label and identifier, the operation as `variant`, the drawn
parameters, and a reference to the stage-one row whose video frames they use (the same segment;
for a resampling `speed`, segment `k` of the changed waveform uses original segment
`min(k, n - 1)`; a time stretch keeps the clip's length), so the
augmented data costs audio bytes only. Rows whose reference has no stage-one row (e.g. the video
was shorter than the audio) are left out and reported.

Everything is planned before work starts (parameters are drawn from generators keyed by
`(seed, clip id, operation, copy)`), and the shards are written by the engine stage one uses
(:mod:`~avsc_pipeline.features.shard_engine`): atomic shards, resumable after a kill at any
moment with identical arrays, `--part I/K`, the same order for any number of workers, and a
settings file (`augmentation.json`) that refuses a rerun with other settings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from avsc_pipeline.config import config_diff, config_hash, to_dict
from avsc_pipeline.sections.features import FeatureConfig, OfflineAugmentConfig
from avsc_pipeline.errors import BadClipError, ConfigMismatchError
from avsc_pipeline.features.offline_augment import (
    FAST_DSP, AugmentError, Augmenter, AugmentParams, DspImplementation, draw_params, output_samples,
)
from avsc_pipeline.features.extract import audio_extractor, planned_samples
from avsc_pipeline.features.shard_engine import (
    DEFAULT_SHARD_SIZE, RunSummary, ShardJob, check_run_args, check_state, group_into_shards, hash_strings,
    plan_attrs, set_worker_threads, write_shards,
)
from avsc_pipeline.corpus.clips import Clip
from avsc_pipeline.storage.index import folder_attrs, row_labels
from avsc_pipeline.sections.features import feature_config_of
from avsc_pipeline.storage.shards import ShardWriter, augment_columns

logger = logging.getLogger(__name__)

AUGMENT_STATE = "augmentation.json"


@dataclass(frozen=True)
class AugmentItem:
    """One clip's planned augmentation: what a worker makes and where its video rows are.

    Attributes:
        clip: the clip.
        label: its index in the class list (-1 where unknown).
        samples: its length in samples at the feature rate, from the header.
        variants: the drawn parameters, operation by operation, copy by copy.
        partners: the partner clips of its `mix` variants.
        available: the clip's segments that have a stage-one row (resolvable video references).
        unavailable: `(what, reason)` for variants that cannot be made (e.g. no partner).
    """

    clip: Clip
    label: int
    samples: int
    variants: Tuple[AugmentParams, ...]
    partners: Tuple[Clip, ...] = ()
    available: FrozenSet[int] = frozenset()
    unavailable: Tuple[Tuple[str, str], ...] = ()

    @property
    def clip_id(self) -> str:
        return self.clip.clip_id


@dataclass
class VariantOutput:
    """A worker's features for one variant, or why it could not be made."""

    params: AugmentParams
    audio: Optional[np.ndarray] = None  # (K, 6, n_mels, T)
    skipped: Optional[Tuple[str, str]] = None  # (file, reason)


@dataclass
class AugmentResult:
    """What a worker returns for one clip."""

    item: AugmentItem
    outputs: List[VariantOutput] = field(default_factory=list)
    segments: int = 0  # whole segments of the original clip
    skipped: Optional[Tuple[str, str]] = None  # the clip's own audio is bad


def video_reference(params: AugmentParams, segment: int, segments: int) -> int:
    """The original segment whose frames augmented segment `segment` uses.

    Args:
        params: the variant.
        segment: segment of the augmented waveform.
        segments: whole segments of the original clip.
    """
    return min(segment, segments - 1) if params.op == "speed" else segment


def plan_items(clips: Sequence[Clip], config: OfflineAugmentConfig, feature_config: FeatureConfig,
               classes: Sequence[str], source_rows: Dict[Tuple[str, int], int],
               video_source: str) -> List[AugmentItem]:
    """Draw every clip's parameters and partners (deterministic for the config's seed).

    Partners of `mix` are drawn among the clips of the same class that have stage-one rows.

    Args:
        clips: the manifest.
        config: the augmentation config.
        feature_config: the feature settings (for segment counts).
        classes: the class list.
        source_rows: `(clip_id, segment) -> label` of the stage-one folder.
        video_source: the stage-one folder as named in messages.
    """
    segments: Dict[str, set] = {}
    for clip_id, segment in source_rows:
        segments.setdefault(clip_id, set()).add(segment)
    by_label: Dict[str, List[Clip]] = {}  # partners: clips whose audio stage one could use
    for clip in clips:
        if clip.label is not None and clip.clip_id in segments:
            by_label.setdefault(clip.label, []).append(clip)
    items = []
    for clip in clips:
        label = _label_of(clip, classes)
        if clip.clip_id not in segments:
            reason = f"no rows in the stage-one shards of {video_source} (skipped there?)"
            items.append(AugmentItem(clip, label, 0, (), unavailable=(("all variants", reason),)))
            continue
        same_class = by_label.get(clip.label, []) if clip.label is not None else []
        variants, unavailable = [], []
        for op in config.ops:
            for copy in range(config.copies):
                try:
                    variants.append(draw_params(config, clip.clip_id, op, copy, [c.clip_id for c in same_class]))
                except AugmentError as err:
                    unavailable.append((f"{op} copy {copy}", str(err)))
        wanted = {p.partner for p in variants if p.partner}
        items.append(AugmentItem(
            clip, label, planned_samples(clip, feature_config), tuple(variants),
            partners=tuple(c for c in same_class if c.clip_id in wanted),
            available=frozenset(segments[clip.clip_id]), unavailable=tuple(unavailable),
        ))
    return items


def _label_of(clip: Clip, classes: Sequence[str]) -> int:
    if clip.label is None:
        return -1
    if clip.label not in classes:
        raise ValueError(f"{clip.source}: label {clip.label!r} is not in the stage-one class list {list(classes)}")
    return list(classes).index(clip.label)


def planned_rows(item: AugmentItem, feature_config: FeatureConfig) -> int:
    """Rows an item should give: augmented segments whose video reference resolves."""
    n = item.samples // feature_config.segment_samples
    rows = 0
    for params in item.variants:
        k = output_samples(params, item.samples) // feature_config.segment_samples
        rows += sum(video_reference(params, j, n) in item.available for j in range(k))
    return rows


def augment_clip(item: AugmentItem, feature_config: FeatureConfig, config: OfflineAugmentConfig,
                 threads: Optional[int] = None, dsp: Optional[DspImplementation] = None) -> AugmentResult:
    """Features of every planned variant of one clip; bad input becomes `skipped`, never an exception.
    `dsp` replaces the fast DSP (a benchmark passes librosa's, `testing.librosa_dsp()`)."""
    from avsc_pipeline.features.audio import load_audio

    set_worker_threads(threads)
    if not item.variants:
        return AugmentResult(item)
    try:
        audio = load_audio(item.clip.audio, feature_config)
    except BadClipError as err:
        return AugmentResult(item, skipped=(err.path, err.reason))
    augmenter = Augmenter(audio, feature_config.sample_rate, item.clip_id, config, dsp=dsp or FAST_DSP)
    partners = {c.clip_id: c for c in item.partners}
    loaded: Dict[str, np.ndarray] = {}
    outputs = []
    for params in item.variants:
        try:
            partner = None
            if params.op == "mix":
                if params.partner not in loaded:
                    loaded[params.partner] = load_audio(partners[params.partner].audio, feature_config)
                partner = loaded[params.partner]
            outputs.append(_features(params, augmenter(params, partner), feature_config))
        except BadClipError as err:
            outputs.append(VariantOutput(params, skipped=(err.path, f"{_what(params)}: {err.reason}")))
        except AugmentError as err:
            outputs.append(VariantOutput(params, skipped=(str(item.clip.audio), f"{_what(params)}: {err}")))
    return AugmentResult(item, outputs, segments=audio.shape[1] // feature_config.segment_samples)


def _features(params: AugmentParams, waveform: np.ndarray, feature_config: FeatureConfig) -> VariantOutput:
    from avsc_pipeline.features.audio import split_segments

    features = audio_extractor(feature_config)(split_segments(waveform, feature_config))
    return VariantOutput(params, audio=features.astype(feature_config.audio_dtype, copy=False))


def _what(params: AugmentParams) -> str:
    return f"{params.op} copy {params.copy}"


def _add_rows(writer: ShardWriter, result: AugmentResult, strict: bool, video_source: str) -> None:
    """Write one clip's augmented rows (parent process, plan order) and record what was left out."""
    item = result.item
    for what, reason in item.unavailable:
        logger.warning("%s: no %s (%s)", item.clip_id, what, reason)
        writer.skip(item.clip_id, str(item.clip.audio), f"{what}: {reason}")
    if result.skipped is not None:
        _skip(writer, item.clip_id, result.skipped, strict)
        return
    for output in result.outputs:
        if output.skipped is not None:
            _skip(writer, item.clip_id, output.skipped, strict)
            continue
        params = output.params
        refs = [video_reference(params, j, result.segments) for j in range(len(output.audio))]
        keep = [j for j, ref in enumerate(refs) if ref in item.available]
        if len(keep) < len(refs):
            reason = (f"{_what(params)}: {len(refs) - len(keep)} segment(s) without a stage-one video row "
                      f"in {video_source}")
            logger.warning("%s: %s", item.clip_id, reason)
            writer.skip(item.clip_id, str(item.clip.video or item.clip.audio), reason)
        if keep:
            columns = _columns(item, params, output.audio[keep], keep, [refs[j] for j in keep])
            writer.add(**{name: values for name, values in columns.items() if name in writer.columns})


def _skip(writer: ShardWriter, clip_id: str, skipped: Tuple[str, str], strict: bool) -> None:
    path, reason = skipped
    if strict:
        raise BadClipError(path, reason)
    logger.warning("%s: skipped %s (%s)", path, clip_id, reason)
    writer.skip(clip_id, path, reason)


def _columns(item: AugmentItem, params: AugmentParams, audio: np.ndarray, segments: List[int],
             refs: List[int]) -> Dict[str, Any]:
    k = len(segments)

    def floats(value: float) -> np.ndarray:
        return np.full(k, value, dtype=np.float32)

    return dict(
        audio=audio,
        label=np.full(k, item.label, dtype=np.int16),
        clip_id=[item.clip_id] * k,
        segment=np.asarray(segments, dtype=np.int16),
        identifier=[item.clip.identifier] * k,
        variant=[params.op] * k,
        audio_file=[item.clip.audio_file] * k,
        video_ref_clip=[item.clip_id] * k,
        video_ref_segment=np.asarray(refs, dtype=np.int16),
        copy=np.full(k, params.copy, dtype=np.int16),
        semitones=floats(params.semitones),
        speed=floats(params.speed),
        snr_db=floats(params.snr_db),
        gain=floats(params.gain),
        partner_clip=[params.partner] * k,
        stretch=floats(params.stretch),  # these two only where the config's schema has them
        clip_gain=floats(params.clip_gain),
    )


def _source_config(source: Path, feature_config: Optional[FeatureConfig]) -> Tuple[FeatureConfig, List[str]]:
    """The feature config and classes of the stage-one folder, checked against a requested config."""
    try:
        attrs = folder_attrs(source)
    except ValueError as err:
        raise ValueError(f"{err}; run `avsc-features extract` for this split first") from err
    stored = feature_config_of(attrs, source=str(source))
    if feature_config is not None:
        diff = config_diff(to_dict(stored), to_dict(feature_config))
        if diff:
            raise ConfigMismatchError(f"{source}: stage one used other feature settings ({'; '.join(diff)})")
    return stored, list(attrs["classes"])


def augment_split(
    clips: Sequence[Clip],
    source: "str | os.PathLike[str]",
    folder: "str | os.PathLike[str]",
    config: OfflineAugmentConfig,
    *,
    feature_config: Optional[FeatureConfig] = None,
    jobs: int = 1,
    backend: str = "loky",
    scheduler: Optional[str] = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    part: Optional[Tuple[int, int]] = None,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Augment a manifest's clips into `folder/shard-*.h5` that refer to `source`'s video rows.

    Args:
        clips: the manifest (the same split that stage one extracted into `source`).
        source: the stage-one folder of that split, e.g. `OUT/train`.
        folder: the output folder, e.g. `OUT/train-aug`.
        config: operations, copies, seed and parameter ranges.
        feature_config: must equal the stage-one config when given; taken from `source` when None.
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
        ConfigMismatchError: the folder was made with other settings and not `overwrite`, or the
            stage-one folder used other feature settings than `feature_config`.
        ValueError: no clips, no stage-one shards, or a label outside their class list.
    """
    if not isinstance(config, OfflineAugmentConfig):
        raise TypeError(f"expected an OfflineAugmentConfig, got {type(config).__name__}")
    if not clips:
        raise ValueError("expected at least one clip in the manifest, got none")
    check_run_args(jobs, backend)
    source, folder = Path(source), Path(folder)
    feature_config, classes = _source_config(source, feature_config)
    video_source = os.path.relpath(source.resolve(), folder.resolve())
    rows = row_labels(source)
    items = plan_items(clips, config, feature_config, classes, rows, video_source)
    plans = group_into_shards(items, [planned_rows(i, feature_config) for i in items], shard_size)
    state = {"feature_config": to_dict(feature_config), "augment_config": to_dict(config),
             "classes": classes, "shard_size": shard_size, "shards": len(plans),
             "plan_hash": hash_strings(p.plan_hash for p in plans), "video_source": video_source,
             "source_rows": hash_strings(f"{c}\0{s}" for c, s in sorted(rows))}
    check_state(folder, state, overwrite, AUGMENT_STATE)
    job = ShardJob(
        folder=folder,
        plans=plans,
        columns=augment_columns(feature_config, config),
        attrs=partial(plan_attrs, classes=classes, config=feature_config, video_source=video_source,
                      augment_config=to_dict(config), augment_hash=config_hash(config)),
        work=partial(augment_clip, feature_config=feature_config, config=config),
        add=partial(_add_rows, strict=strict, video_source=video_source),
        done_keys=("plan_hash", "config_hash", "augment_hash"),
    )
    return write_shards(job, jobs=jobs, backend=backend, scheduler=scheduler, part=part, progress=progress)

