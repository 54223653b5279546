"""Stage one orchestration: a manifest in, a folder of HDF5 shards and its index out.

Clips are planned into shards before any work starts (segment counts come from file headers),
so the assignment of clips to shards depends only on the manifest, the config and the shard
size: not on `--jobs`, the backend or `--part`. Workers compute one clip at a time and return
arrays; the parent writes shards in plan order, each atomically. A rerun keeps finished shards
and redoes the rest, giving exactly the arrays of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from avsc_pipeline.config import FeatureConfig, config_diff, config_hash, to_dict
from avsc_pipeline.errors import BadClipError, ConfigMismatchError
from avsc_pipeline.manifest import Clip, label_index
from avsc_pipeline.storage.index import INDEX_NAME, build_index, write_json_atomic
from avsc_pipeline.storage.shards import (
    SHARD_GLOB, Column, ShardWriter, read_attrs, shard_attrs, shard_name, stage_one_columns,
)

logger = logging.getLogger(__name__)

STATE_NAME = "extraction.json"
DEFAULT_SHARD_SIZE = 512
BACKENDS = ("loky", "dask")


@dataclass(frozen=True)
class ShardPlan:
    """The work items planned into one shard and how many segments they should give.

    Items are :class:`Clip` records for extraction; any record with a `clip_id` works (the
    augmentation plans its own items through :func:`group_into_shards`).
    """

    number: int
    clips: Tuple[Any, ...]
    segments: int

    @property
    def name(self) -> str:
        return shard_name(self.number)

    @property
    def plan_hash(self) -> str:
        return hash_strings(c.clip_id for c in self.clips)


@dataclass
class ClipResult:
    """What a worker returns for one clip: features, or the reason it was skipped."""

    clip: Clip
    audio: Optional[np.ndarray] = None  # (K, 6, n_mels, T)
    video: Optional[np.ndarray] = None  # (K, 2, 3, S, S) uint8
    skipped: Optional[Tuple[str, str]] = None  # (file, reason)
    dropped: int = 0  # trailing segments without frames


@dataclass
class ExtractSummary:
    """Outcome of one extraction run."""

    folder: Path
    shards_written: List[str] = field(default_factory=list)
    shards_kept: List[str] = field(default_factory=list)
    rows: int = 0
    skipped: List[Dict[str, str]] = field(default_factory=list)


def hash_strings(items: Iterable[str]) -> str:
    """Stable 16-hex-digit hash of a sequence of strings."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def parse_part(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """`"I/K"` (1 <= I <= K) to `(I, K)`; None stays None."""
    if text is None:
        return None
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"expected --part I/K with integers, got {text!r}") from None
    if not 1 <= i <= k:
        raise ValueError(f"expected --part I/K with 1 <= I <= K, got {text!r}")
    return i, k


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


def group_into_shards(items: Sequence[Any], counts: Sequence[int], shard_size: int) -> List[ShardPlan]:
    """Group items, in order, into shards of at most `shard_size` planned rows (`counts[i]` each).

    An item with more than `shard_size` rows gets a shard of its own.
    """
    if shard_size < 1:
        raise ValueError(f"expected shard_size >= 1, got {shard_size}")
    if len(items) != len(counts):
        raise ValueError(f"expected one row count per item, got {len(counts)} for {len(items)} items")
    plans: List[ShardPlan] = []
    current: List[Any] = []
    total = 0
    for item, n in zip(items, counts):
        if current and total + n > shard_size:
            plans.append(ShardPlan(len(plans), tuple(current), total))
            current, total = [], 0
        current.append(item)
        total += n
    if current:
        plans.append(ShardPlan(len(plans), tuple(current), total))
    return plans


_EXTRACTORS: Dict[str, Any] = {}


def audio_extractor(config: FeatureConfig) -> Any:
    """This process's fast feature extractor for `config` (made once; holds only filter matrices)."""
    from avsc_pipeline.features.audio import FastLogMel

    key = config_hash(config)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = FastLogMel(config)
    return _EXTRACTORS[key]


def set_worker_threads(threads: Optional[int]) -> None:
    """Limit torch's threads in a worker process (None leaves them as they are)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def extract_clip(clip: Clip, config: FeatureConfig, with_video: bool, threads: Optional[int] = None) -> ClipResult:
    """Features of one clip; bad input becomes a `skipped` result, never an exception."""
    from avsc_pipeline.features.audio import load_audio, split_segments
    from avsc_pipeline.features.video import read_frame_pairs

    set_worker_threads(threads)
    extractor = audio_extractor(config)
    try:
        segments = split_segments(load_audio(clip.audio, config), config)
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


def check_state(folder: Path, state: Dict[str, Any], overwrite: bool, name: str = STATE_NAME) -> None:
    """Refuse a folder made with other settings (naming the fields) unless overwriting.

    The settings are kept in `folder/name`, written on the first run. With `overwrite`, the
    folder's shards, index and settings file are removed first.

    Raises:
        ConfigMismatchError: `folder/name` holds other settings and not `overwrite`.
    """
    path = folder / name
    if overwrite and folder.exists():
        for old in list(folder.glob(SHARD_GLOB)) + list(folder.glob("shard-*.h5.tmp")):
            old.unlink()
        for stale in (INDEX_NAME, name):
            (folder / stale).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        import json

        with open(path, encoding="utf-8") as handle:
            old = json.load(handle)
        diff = state_diff(old, state)
        if diff:
            raise ConfigMismatchError(
                f"{folder}: made with different settings ({'; '.join(diff)}); "
                "use another folder or --overwrite to replace it"
            )
        return
    write_json_atomic(state, path)


def state_diff(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Fields that differ between two settings dicts; nested configs are compared field by field."""
    diff: List[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += [f"{key}.{line}" if key != "feature_config" else line for line in config_diff(a, b)]
        elif a != b or (key in old) != (key in new):
            diff += config_diff({key: old.get(key, "<missing>")}, {key: new.get(key, "<missing>")})
    return diff


def _shard_done(path: Path, expected: Dict[str, Any]) -> bool:
    """Whether `path` is a finished shard with the `expected` attributes (plan and config hashes)."""
    if not path.is_file():
        return False
    try:
        attrs = read_attrs(path)
    except ValueError as err:
        logger.warning("%s: unreadable (%s); writing it again", path, err)
        return False
    if any(attrs.get(key) != value for key, value in expected.items()):
        raise ConfigMismatchError(f"{path}: holds other clips or another config than planned; use --overwrite")
    return True


def check_run_args(jobs: int, backend: str) -> None:
    """Refuse bad worker settings before any folder is touched (`--overwrite` deletes shards)."""
    if backend not in BACKENDS:
        raise ValueError(f"expected backend in {BACKENDS}, got {backend!r}")
    if jobs < 1:
        raise ValueError(f"expected jobs >= 1, got {jobs}")


def run_ordered(work: Callable[..., Any], items: Sequence[Any], jobs: int, backend: str,
                scheduler: Optional[str]) -> Iterator[Any]:
    """`work(item, threads=...)` for every item, yielded in the order of `items`.

    Args:
        work: a picklable callable (a module-level function or a `functools.partial` of one).
        items: the work items.
        jobs: worker processes (or dask tasks in flight); 1 with `loky` runs in this process.
        backend: `loky` (processes on this machine) or `dask` (a dask.distributed cluster).
        scheduler: dask scheduler address; a local cluster is started when None.
    """
    import joblib

    if jobs == 1 and backend == "loky":
        for item in items:
            yield work(item, threads=None)
        return
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    tasks = (joblib.delayed(work)(item, threads=threads) for item in items)
    if backend == "dask":
        from distributed import Client

        with Client(scheduler) if scheduler else Client(processes=True, n_workers=jobs) as client:
            logger.info("dask scheduler %s", client.scheduler.address)
            with joblib.parallel_config(backend="dask"):
                yield from joblib.Parallel(n_jobs=jobs, return_as="generator")(tasks)
        return
    yield from joblib.Parallel(n_jobs=jobs, backend="loky", return_as="generator")(tasks)


@dataclass(frozen=True)
class ShardJob:
    """How to fill one folder of planned shards; shared by extraction and augmentation.

    Attributes:
        folder: the output folder.
        plans: every shard of the folder, in order (a `part` run writes its share).
        columns: the shard schema.
        attrs: the file attributes of a planned shard.
        work: picklable `work(item, threads=None) -> result`, run in workers.
        add: `add(writer, result)`, run in this process in plan order: writes a result's rows
            (or records it as skipped).
        done_keys: attributes that must match for a finished shard to be kept on a rerun.
    """

    folder: Path
    plans: Sequence[ShardPlan]
    columns: Dict[str, Column]
    attrs: Callable[[ShardPlan], Dict[str, Any]]
    work: Callable[..., Any]
    add: Callable[[ShardWriter, Any], None]
    done_keys: Tuple[str, ...] = ("plan_hash", "config_hash")


def write_shards(job: ShardJob, *, jobs: int = 1, backend: str = "loky", scheduler: Optional[str] = None,
                 part: Optional[Tuple[int, int]] = None, progress: bool = True) -> ExtractSummary:
    """Write the planned shards of `job.folder` that are not finished yet, then its index.

    Finished shards (same plan and config) are kept, so a rerun after a crash redoes only the
    rest and ends with the arrays of an uninterrupted run. Results are computed by `jobs` workers
    and written in plan order, each shard atomically.

    Args:
        job: what to write.
        jobs: worker processes (or dask tasks in flight).
        backend: `loky` or `dask`.
        scheduler: dask scheduler address; a local cluster is started when None.
        part: `(I, K)`: only shards `n` with `n % K == I - 1`; no index is written.
        progress: show a progress bar.
    """
    from tqdm import tqdm

    check_run_args(jobs, backend)
    summary = ExtractSummary(job.folder)
    todo = []
    for plan in job.plans:
        if part is not None and plan.number % part[1] != part[0] - 1:
            continue
        attrs = job.attrs(plan)
        if _shard_done(job.folder / plan.name, {k: attrs[k] for k in job.done_keys}):
            summary.shards_kept.append(plan.name)
        else:
            todo.append(plan)
    if summary.shards_kept:
        logger.info("%s: keeping %d finished shards", job.folder, len(summary.shards_kept))
    pending = [item for plan in todo for item in plan.clips]
    results = run_ordered(job.work, pending, jobs, backend, scheduler)
    with tqdm(total=len(pending), unit="clip", desc=job.folder.name, disable=not progress) as bar:
        for plan in todo:
            with ShardWriter(job.folder / plan.name, job.columns, job.attrs(plan)) as writer:
                for _ in plan.clips:
                    job.add(writer, next(results))
                    bar.update(1)
            summary.shards_written.append(plan.name)
            summary.rows += writer.rows
            summary.skipped.extend(writer.skipped)
    if part is None:
        build_index(job.folder)
    else:
        logger.info("%s: part %d/%d done; run `avsc-features index` when all parts are", job.folder, *part)
    return summary


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
) -> ExtractSummary:
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
    check_state(folder, state, overwrite)
    job = ShardJob(
        folder=folder,
        plans=plans,
        columns=stage_one_columns(config, with_video),
        attrs=partial(_plan_attrs, classes=list(classes), config=config),
        work=partial(extract_clip, config=config, with_video=with_video),
        add=partial(_add_result, labels=labels, strict=strict),
    )
    return write_shards(job, jobs=jobs, backend=backend, scheduler=scheduler, part=part, progress=progress)


def _plan_attrs(plan: ShardPlan, classes: List[str], config: FeatureConfig) -> Dict[str, Any]:
    return shard_attrs(classes, config, plan.plan_hash)


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
        variant=["orig"] * k,
    )
    if result.video is not None:
        columns["video"] = result.video
    writer.add(**columns)
