"""The shard-writing engine shared by extraction and offline augmentation.

A run plans its work items into shards before any work starts (:func:`group_into_shards`), so
the assignment of items to shards depends only on the inputs, the config and the shard size:
not on `--jobs`, the backend or `--part`. Workers compute one item at a time and return arrays
(:func:`run_ordered`); the parent writes shards in plan order, each atomically
(:func:`write_shards`). A rerun keeps finished shards and redoes the rest, giving exactly the
arrays of an uninterrupted run; a settings file in the folder (:func:`check_state`) refuses a
rerun with other settings.

What a run writes is described by a :class:`ShardJob`; what it did is a :class:`RunSummary`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from avsc_pipeline.config import config_diff
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.errors import ConfigMismatchError
from avsc_pipeline.storage.index import INDEX_NAME, build_index, write_json_atomic
from avsc_pipeline.storage.shards import (
    SCHEMA_VERSION, SHARD_GLOB, TEMPORARY_GLOB, Column, ShardWriter, read_attrs, shard_attrs, shard_name,
)
from avsc_pipeline import earlier
from avsc_pipeline.storage.versions import fill_earlier

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 512
BACKENDS = ("loky", "dask")


@dataclass(frozen=True)
class ShardPlan:
    """The work items planned into one shard and how many rows they should give.

    Items are :class:`~avsc_pipeline.corpus.clips.Clip` records for extraction; any record with a
    `clip_id` works (offline augmentation plans its own items).
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
class RunSummary:
    """Outcome of one shard-writing run (extraction or offline augmentation)."""

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


def plan_attrs(plan: ShardPlan, classes: List[str], config: FeatureConfig, **extra: Any) -> Dict[str, Any]:
    """The file attributes of a planned shard: :func:`shard_attrs` with the plan's hash.

    Bound with `functools.partial` as :attr:`ShardJob.attrs`; `extra` holds a run's own
    attributes (e.g. offline augmentation's `video_source`).
    """
    return shard_attrs(classes, config, plan.plan_hash, **extra)


def set_worker_threads(threads: Optional[int]) -> None:
    """Limit torch's threads in a worker process (None leaves them as they are)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def check_state(folder: Path, state: Dict[str, Any], overwrite: bool, name: str) -> None:
    """Refuse a folder made with other settings (naming the fields) unless overwriting.

    The settings are kept in `folder/name`, written on the first run. With `overwrite`, the
    folder's shards, index and settings file are removed first.

    Raises:
        ConfigMismatchError: `folder/name` holds other settings and not `overwrite`.
    """
    path = folder / name
    if overwrite and folder.exists():
        for old in list(folder.glob(SHARD_GLOB)) + list(folder.glob(TEMPORARY_GLOB)):
            old.unlink()
        for stale in (INDEX_NAME, name):
            (folder / stale).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        import json

        with open(path, encoding="utf-8") as handle:
            old = json.load(handle)
        new_config = state.get("feature_config")
        if isinstance(old.get("feature_config"), dict) and isinstance(new_config, dict):
            # Written before shard schema 3 (log-mel only): the keys it could not hold.
            missing = {k: v for k, v in earlier.BEFORE_WAVEFORM.items() if k in new_config}
            old["feature_config"] = fill_earlier(old["feature_config"], missing)
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
    if attrs["schema_version"] != SCHEMA_VERSION:
        logger.info("%s: schema version %d; writing it again in version %d", path, attrs["schema_version"],
                    SCHEMA_VERSION)
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
    """How to fill one folder of planned shards; shared by extraction and offline augmentation.

    Attributes:
        folder: the output folder.
        plans: every shard of the folder, in order (a `part` run writes its share).
        columns: the shard schema.
        attrs: the file attributes of a planned shard (usually :func:`plan_attrs`, bound).
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
                 part: Optional[Tuple[int, int]] = None, progress: bool = True) -> RunSummary:
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
    summary = RunSummary(job.folder)
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
