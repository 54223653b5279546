"""HDF5 feature shards: schema, an atomic writer, and attribute readers.

A shard `shard-00000.h5` holds up to `shard_size` one-second segments as fixed-shape,
contiguous (unchunked, uncompressed) datasets, the layout measured fastest for random
single-sample reads (`bench/bench_shard_reads.py`):

=============  ==========================  ============================================
dataset        shape, dtype                meaning
=============  ==========================  ============================================
`audio`        `(N, 6, 128, 39)` float32   log-mel + deltas, left then right (or float16);
                                           with `feature_config.audio: waveform` (schema 3)
                                           `(N, 2, W)`, both channels' waveform at
                                           `waveform_rate` (W = 32000 for 1 s at 32 kHz)
`video`        `(N, 2, 3, 224, 224)` uint8 the frame pair of the segment (absent in
                                           audio-only and augmented shards)
`label`        `(N,)` int16                index into `classes`, -1 where unknown
`clip_id`      `(N,)` utf-8                the clip's id (by default its audio file's stem)
`segment`      `(N,)` int16                second within the clip
`identifier`   `(N,)` utf-8                recording location
`variant`      `(N,)` utf-8                `orig`, or the augmentation that made the row
`audio_file`   `(N,)` utf-8                the clip's audio file as the manifest lists it
                                           (schema 2; relative names stay relative)
`video_file`   `(N,)` utf-8                its video file likewise (schema 2; with `video`)
=============  ==========================  ============================================

File attributes: `schema_version`, `classes` (JSON list), `feature_config` (JSON),
`config_hash`, `created_by`, `plan_hash` (which clips the shard was planned to hold) and
`skipped` (JSON list of clips left out, each with file and reason). :func:`read_attrs` migrates
the attributes of earlier schema versions (:mod:`~avsc_pipeline.storage.versions`); a shard of
schema 1 has no `audio_file` and `video_file`.

Writers write `NAME.tmp` and rename it to `NAME` when complete (:mod:`avsc_pipeline.atomic`), so
a file named `shard-*.h5` is always whole. Columns are read back through
:mod:`~avsc_pipeline.storage.columns`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from avsc_pipeline import __version__
from avsc_pipeline.atomic import TEMPORARY_SUFFIX, atomic_path
from avsc_pipeline.config import config_hash, to_dict
from avsc_pipeline.storage.versions import SCHEMA_VERSION, migrate

SHARD_GLOB = "shard-*.h5"
#: A shard being written (or left by a killed run): `shard-*.h5.tmp`, never a complete shard.
TEMPORARY_GLOB = SHARD_GLOB + TEMPORARY_SUFFIX
STRING = "str"


@dataclass(frozen=True)
class Column:
    """One per-row dataset: `dtype` is a numpy dtype name or `"str"` (variable-length utf-8)."""

    dtype: str
    shape: Tuple[int, ...] = ()


def shard_name(number: int) -> str:
    """File name of shard `number`, e.g. `shard-00003.h5`."""
    return f"shard-{number:05d}.h5"


def stage_one_columns(config: Any, with_video: bool = True, schema_version: int = SCHEMA_VERSION) -> Dict[str, Column]:
    """The stage-one schema for a feature config.

    Args:
        config: the FeatureConfig of the features (its `audio_shape`, `audio_dtype`, `video_shape`).
        with_video: with the `video` frames (and, from schema 2, the `video_file` names).
        schema_version: the schema to describe; earlier versions lack the file-name columns.
    """
    columns = {"audio": Column(config.audio_dtype, config.audio_shape)}
    if with_video:
        columns["video"] = Column("uint8", config.video_shape)
    columns.update(
        label=Column("int16"),
        clip_id=Column(STRING),
        segment=Column("int16"),
        identifier=Column(STRING),
        variant=Column(STRING),
    )
    if schema_version >= 2:
        columns["audio_file"] = Column(STRING)
        if with_video:
            columns["video_file"] = Column(STRING)
    return columns


ORIGINAL_VARIANT = "orig"  # the `variant` of a stage-one row
# Offline augmentation of split `S` writes the folder `S-aug` beside it (e.g. `train-aug`).
AUGMENTED_SUFFIX = "-aug"


def augmented_split(split: str) -> str:
    """The folder name of split `split`'s offline-augmented rows, e.g. `train` -> `train-aug`."""
    return f"{split}{AUGMENTED_SUFFIX}"


# The offline augmentation operations, each the `variant` of the rows it writes.
AUGMENT_VARIANTS: Tuple[str, ...] = ("pitch", "speed", "noise", "mix")


def augment_columns(config: Any, augment: Optional[Any] = None,
                    schema_version: int = SCHEMA_VERSION) -> Dict[str, Column]:
    """The schema of augmented shards: stage one's without `video`, plus references and parameters.

    =====================  ==========  ==========================================================
    `video_ref_clip`       utf-8       clip id of the stage-one row whose frames this row uses
    `video_ref_segment`    int16       its segment
    `copy`                 int16       which copy of the operation on this clip (0-based)
    `semitones`            float32     pitch shift (`pitch`; NaN otherwise)
    `speed`                float32     speed factor of a resampling speed change (`speed` with
                                       `speed_method: resample`; NaN otherwise)
    `snr_db`               float32     signal-to-noise ratio in dB (`noise` with `noise: snr`;
                                       NaN otherwise)
    `gain`                 float32     gain of the partner clip (`mix`; NaN otherwise)
    `partner_clip`         utf-8       the partner clip's id (`mix`; empty otherwise)
    `stretch`              float32     time-stretch rate (`speed` with `speed_method: stretch`;
                                       NaN otherwise); only in shards made with that method
    `clip_gain`            float32     gain of the clip itself (`mix` with `mix: two_gains`; NaN
                                       otherwise); only in shards made with two gains
    =====================  ==========  ==========================================================

    Shards made with `speed_method: resample` and `mix: one_gain` (the earlier variants) have
    exactly the earlier columns. `noise: fixed` draws no parameter (its standard deviation is the
    config's `noise_std`, in the `augment_config` attribute).

    From schema 2 the rows also carry `audio_file`, the clip's audio file as the manifest lists
    it (no `video_file`: the frames are the referenced stage-one row's).

    Args:
        config: the FeatureConfig of the features.
        augment: the augmentation config the shards were made with (None: the earlier columns).
        schema_version: the schema to describe.
    """
    columns = stage_one_columns(config, with_video=False, schema_version=schema_version)
    columns.update(
        video_ref_clip=Column(STRING),
        video_ref_segment=Column("int16"),
        copy=Column("int16"),
        semitones=Column("float32"),
        speed=Column("float32"),
        snr_db=Column("float32"),
        gain=Column("float32"),
        partner_clip=Column(STRING),
    )
    if augment is not None and augment.speed_method == "stretch":
        columns["stretch"] = Column("float32")
    if augment is not None and augment.mix == "two_gains":
        columns["clip_gain"] = Column("float32")
    return columns


def shard_attrs(
    classes: Sequence[str], config: Any, plan_hash: str = "", **extra: Any
) -> Dict[str, Any]:
    """The file attributes every shard carries (extra values must be JSON-serializable)."""
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "classes": json.dumps(list(classes)),
        "feature_config": json.dumps(to_dict(config), sort_keys=True),
        "config_hash": config_hash(config),
        "created_by": f"avsc-pipeline {__version__}",
        "plan_hash": plan_hash,
    }
    attrs.update({k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in extra.items()})
    return attrs


class ShardWriter:
    """Collects rows for one shard and writes it atomically on a clean exit.

    Use as a context manager::

        with ShardWriter(path, stage_one_columns(cfg), shard_attrs(classes, cfg)) as writer:
            writer.add(audio=a, video=v, label=l, clip_id=ids, ...)
            writer.skip("clip", "/data/x.wav", "audio file is empty")

    Rows are held in memory (bounded by the shard size) and written at exit as contiguous
    datasets to `path + ".tmp"`, which is then renamed to `path`. If the block raises, nothing
    is left behind.
    """

    def __init__(self, path: "str | os.PathLike[str]", columns: Dict[str, Column], attrs: Dict[str, Any]) -> None:
        self.path = Path(path)
        self.columns = dict(columns)
        self.attrs = dict(attrs)
        self._parts: Dict[str, List[np.ndarray]] = {name: [] for name in self.columns}
        self.skipped: List[Dict[str, str]] = []
        self.rows = 0

    def __enter__(self) -> "ShardWriter":
        return self

    def add(self, **arrays: Any) -> None:
        """Append rows: one array (or list) per column, all with the same leading length."""
        if set(arrays) != set(self.columns):
            raise ValueError(f"expected columns {sorted(self.columns)}, got {sorted(arrays)}")
        lengths = {name: len(value) for name, value in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"expected equal row counts for all columns, got {lengths}")
        for name, value in arrays.items():
            column = self.columns[name]
            if column.dtype == STRING:
                self._parts[name].append(np.asarray([str(v) for v in value], dtype=object))
                continue
            array = np.asarray(value)
            if array.shape[1:] != column.shape:
                raise ValueError(f"column {name!r}: expected rows of shape {column.shape}, got {array.shape[1:]}")
            self._parts[name].append(array.astype(column.dtype, copy=False))
        self.rows += next(iter(lengths.values()))

    def skip(self, clip_id: str, path: str, reason: str) -> None:
        """Record a clip (or part of one) that was left out, with its file and the reason."""
        self.skipped.append({"clip_id": clip_id, "file": str(path), "reason": reason})

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.write()

    def write(self) -> Path:
        """Write everything added so far to the shard file (atomically); returns its path."""
        import h5py

        # One fixed temporary name per shard: a rerun after a kill writes over the killed run's
        # leftover (and `--overwrite` finds it by TEMPORARY_GLOB) instead of leaving it behind.
        with atomic_path(self.path, temporary=self.path.with_name(self.path.name + TEMPORARY_SUFFIX)) as tmp:
            with h5py.File(tmp, "w") as handle:
                for name, column in self.columns.items():
                    self._write_column(handle, name, column)
                for key, value in self.attrs.items():
                    handle.attrs[key] = value
                handle.attrs["skipped"] = json.dumps(self.skipped)
                handle.attrs["rows"] = self.rows
        return self.path

    def _write_column(self, handle: Any, name: str, column: Column) -> None:
        import h5py

        dtype = h5py.string_dtype("utf-8") if column.dtype == STRING else np.dtype(column.dtype)
        dataset = handle.create_dataset(name, shape=(self.rows,) + column.shape, dtype=dtype)
        start = 0
        for part in self._parts[name]:
            if len(part):
                dataset[start : start + len(part)] = part
            start += len(part)


def read_attrs(path: "str | os.PathLike[str]") -> Dict[str, Any]:
    """A shard's attributes with JSON fields decoded, plus `rows` and `datasets`.

    The attributes of an earlier schema version are migrated to today's meaning
    (:func:`~avsc_pipeline.storage.versions.migrate`); `schema_version` keeps the stored value.

    Raises:
        ValueError: the file cannot be opened as HDF5, lacks the schema attributes, or has a
            schema version this package does not know.
    """
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            raw = dict(handle.attrs)
            datasets = {name: (tuple(ds.shape), str(ds.dtype)) for name, ds in handle.items()}
    except OSError as err:
        raise ValueError(f"{path}: cannot open as HDF5 ({err})") from err
    missing = [k for k in ("schema_version", "classes", "feature_config") if k not in raw]
    if missing:
        raise ValueError(f"{path}: not an avsc-pipeline shard (missing attributes {missing})")
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in raw.items()}
    for key in ("classes", "feature_config", "skipped"):
        if key in attrs:
            attrs[key] = json.loads(attrs[key])
    attrs["datasets"] = datasets
    return migrate(attrs, str(path))


def list_shards(folder: "str | os.PathLike[str]") -> List[Path]:
    """Complete shard files in a folder, sorted by name (temporary files are ignored)."""
    return sorted(Path(folder).glob(SHARD_GLOB))
