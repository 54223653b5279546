"""A training dataset over shard folders: originals plus `train-aug`, video references resolved.

:class:`ShardDataset` maps every item to `(shard, row)` through each folder's `index.json`.
Metadata columns (label, clip id, segment, identifier, variant, and an augmented row's mix
partner where the shard stores it) are read once, when the dataset is made
(:func:`~avsc_pipeline.storage.columns.read_columns`), and kept as numpy arrays (fixed-width
strings, so forked workers do not copy them).
Feature rows are read on demand:

- Shards are opened lazily in the process that reads them (each DataLoader worker opens its own)
  and closed by :meth:`ShardDataset.close`; nothing open is pickled or inherited by a fork.
- Stage one writes contiguous, uncompressed datasets, so a row is a fixed byte range at the
  offset HDF5 reports for the dataset, copied from a memory map of the file straight into the
  batch (:mod:`~avsc_pipeline.storage.shard_io`; h5py's per-row overhead costs several times
  the copy itself). A chunked or filtered dataset is read through h5py instead.

Augmented shards (`train-aug`) have no `video`; each row names the original segment whose
frames it reuses (`video_ref_clip`, `video_ref_segment`), and the shard attribute
`video_source` names the originals' folder relative to the augmented one. Every reference is
resolved when the dataset is made; one that does not resolve is an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from avsc_pipeline.config import config_diff, from_dict, to_dict
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.errors import ConfigMismatchError
from avsc_pipeline.storage.columns import read_columns
from avsc_pipeline.storage.index import load_index
from avsc_pipeline.storage.shard_io import ShardFile, ShardReaders, open_shard_file
from avsc_pipeline.storage.shards import ORIGINAL_VARIANT

logger = logging.getLogger(__name__)

META_COLUMNS = ("label", "clip_id", "segment", "identifier", "variant")
REF_COLUMNS = ("video_ref_clip", "video_ref_segment")
#: Read where a shard has it: the clip an offline-augmented `mix` row was mixed with.
PARTNER_COLUMN = "partner_clip"


@dataclass
class _Folder:
    """One scanned folder: its shard files and the metadata of all its rows."""

    path: Path
    shards: List[ShardFile]
    meta: Dict[str, np.ndarray]
    shard_of: np.ndarray
    row_of: np.ndarray
    video_source: Optional[str] = None
    refs: Optional[Tuple[np.ndarray, np.ndarray]] = None
    partners: Optional[np.ndarray] = None


class ShardDataset(torch.utils.data.Dataset):
    """Items of one or more shard folders (e.g. `OUT/train` and `OUT/train-aug`).

    Args:
        folders: shard folders, each with an `index.json`.
        with_video: return frames; then every row needs frames or a video reference.
        classes: the class list the caller needs; defaults to the first shard's.
        feature_config: the feature config the caller needs; defaults to the first shard's.

    Raises:
        ConfigMismatchError: a shard's feature config or class list differs from the others (or
            from the ones passed), naming the differing fields.
        ValueError: a missing index, a stale index, missing columns, or video references that
            do not resolve.

    Each item is a dict: `audio (6, 128, 39) float32`, `video (2, 3, 224, 224) uint8` (when
    `with_video`), `label` int (-1 unknown), `clip_id` str, `segment` int, `variant` str and
    `index` int (the item's position). :meth:`read_batch` returns the same keys for a list of
    items, stacked.
    """

    def __init__(self, folders: Sequence["str | os.PathLike[str]"], with_video: bool = True,
                 classes: Optional[Sequence[str]] = None,
                 feature_config: Optional[FeatureConfig] = None) -> None:
        if isinstance(folders, (str, os.PathLike)):
            folders = [folders]
        if not folders:
            raise ValueError("expected at least one shard folder, got none")
        resolved = [Path(f).resolve() for f in folders]
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"expected distinct shard folders, got {[str(f) for f in folders]}")
        self.with_video = bool(with_video)
        self._expected = _Expectation(classes, feature_config)
        scanned = [_scan_folder(Path(f), self._expected) for f in folders]
        self.classes: List[str] = list(self._expected.classes)
        self.feature_config: FeatureConfig = from_dict(FeatureConfig, self._expected.config, "shard feature config")
        self._build(scanned)
        self._readers = ShardReaders()

    # -- construction -------------------------------------------------------------------------

    def _build(self, scanned: List[_Folder]) -> None:
        self._shards: List[ShardFile] = []
        by_path = {f.path.resolve(): f for f in scanned}
        offsets = {f.path.resolve(): self._add_shards(f) for f in scanned}
        audio_loc, video_loc = [], []
        for folder in scanned:
            base = offsets[folder.path.resolve()]
            audio_loc.append(np.stack([folder.shard_of + base, folder.row_of], axis=1))
            video_loc.append(self._video_locations(folder, base, by_path, offsets))
        self._audio_loc = np.concatenate(audio_loc).astype(np.int64)
        self._video_loc = np.concatenate(video_loc).astype(np.int64)
        meta = {name: np.concatenate([f.meta[name] for f in scanned]) for name in META_COLUMNS}
        self.labels: np.ndarray = meta["label"].astype(np.int64)
        self.segments: np.ndarray = meta["segment"].astype(np.int64)
        self.clip_ids: np.ndarray = meta["clip_id"]
        self.identifiers: np.ndarray = meta["identifier"]
        self.variants: np.ndarray = meta["variant"]
        self.is_augmented: np.ndarray = self.variants != ORIGINAL_VARIANT
        # The offline-mixing partner of each row ('' for none or not recorded), so that training
        # can keep a mix with a held-out location's clip out (training_input).
        self.partner_clips: np.ndarray = np.concatenate([f.partners for f in scanned])
        self.folder_of: np.ndarray = np.concatenate(
            [np.full(len(f.row_of), k, dtype=np.int64) for k, f in enumerate(scanned)])

    def _add_shards(self, folder: _Folder) -> int:
        base = len(self._shards)
        self._shards.extend(folder.shards)
        return base

    def _video_locations(self, folder: _Folder, base: int, by_path: Dict[Path, _Folder],
                         offsets: Dict[Path, int]) -> np.ndarray:
        """`(rows, 2)` int64 (shard number, row) of each row's frames; -1 where there are none."""
        rows = len(folder.row_of)
        if not self.with_video:
            return np.full((rows, 2), -1, dtype=np.int64)
        if folder.refs is None:
            missing = [s.path for s in folder.shards if s.video is None]
            if missing:
                raise ValueError(f"{missing[0]}: these shards hold no video frames (extracted from audio alone), "
                                 "and a video or joint model needs them: extract the clips with their videos, "
                                 "or train an audio model (model.modality=audio)")
            return np.stack([folder.shard_of + base, folder.row_of], axis=1)
        source_path = (folder.path / folder.video_source).resolve()
        if source_path not in by_path:
            by_path[source_path] = _scan_folder(source_path, self._expected)
            offsets[source_path] = self._add_shards(by_path[source_path])
        return _resolve_refs(folder, by_path[source_path], offsets[source_path])

    # -- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._audio_loc)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        batch = self.read_batch([index])
        item = {key: value[0] for key, value in batch.items()}
        for key in ("label", "segment", "index"):
            item[key] = int(item[key])
        return item

    def read_batch(self, indices: Sequence[int], out: Optional[Dict[str, torch.Tensor]] = None,
                   audio_float32: bool = True) -> Dict[str, Any]:
        """Read items into stacked tensors.

        Args:
            indices: item positions.
            out: buffers to read into, `audio (n, 6, 128, 39)` in the stored dtype and `video
                (n, 2, 3, 224, 224)` uint8 with `n >= len(indices)`; the first rows are used.
            audio_float32: convert float16 audio to float32 (else keep the stored dtype, for
                conversion on the training device).

        Returns:
            `audio (B, 6, 128, 39)` float32 (or the stored dtype), `video (B, 2, 3, 224, 224)`
            uint8 (when `with_video`), `label (B,)` int64, `segment (B,)` int64, `index (B,)`
            int64, `clip_id` and `variant` (lists of B str).
        """
        idx = self._check_indices(indices)
        buffers = self._buffers(len(idx), out)
        self._read_rows("audio", self._audio_loc[idx], buffers["audio"].numpy())
        audio = buffers["audio"]
        batch: Dict[str, Any] = {"audio": audio.float() if audio_float32 else audio}
        if self.with_video:
            self._read_rows("video", self._video_loc[idx], buffers["video"].numpy())
            batch["video"] = buffers["video"]
        batch["label"] = torch.from_numpy(self.labels[idx])
        batch["segment"] = torch.from_numpy(self.segments[idx])
        batch["index"] = torch.from_numpy(idx)
        batch["clip_id"] = self.clip_ids[idx].tolist()
        batch["variant"] = self.variants[idx].tolist()
        return batch

    def frame_sources(self, rows: Sequence[int]) -> np.ndarray:
        """For each row, the first dataset row that reads the same frames (an offline-augmented
        row shares its source row's), so frames can be embedded once per distinct pair.

        Returns:
            `(len(rows),)` int64 dataset rows.
        """
        if not self.with_video:
            raise ValueError("expected a dataset read with_video=True, got with_video=False")
        idx = self._check_indices(rows)
        keys = self._video_loc[:, 0] * (int(self._video_loc[:, 1].max()) + 1) + self._video_loc[:, 1]
        unique, first = np.unique(keys, return_index=True)
        return first[np.searchsorted(unique, keys[idx])].astype(np.int64)

    def buffer_specs(self) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        """Per-row shape and stored dtype of the feature columns :meth:`read_batch` fills."""
        specs = {"audio": (self.feature_config.audio_shape, self._audio_dtype())}
        if self.with_video:
            specs["video"] = (self.feature_config.video_shape, torch.uint8)
        return specs

    def _buffers(self, rows: int, out: Optional[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        buffers = {}
        for name, (shape, dtype) in self.buffer_specs().items():
            given = None if out is None else out.get(name)
            if given is None:
                buffers[name] = torch.empty((rows,) + shape, dtype=dtype)
                continue
            if given.dtype != dtype or tuple(given.shape[1:]) != shape or given.shape[0] < rows:
                raise ValueError(f"expected an {name} buffer of at least ({rows}, *{shape}) {dtype}, "
                                 f"got {tuple(given.shape)} {given.dtype}")
            buffers[name] = given[:rows]
        return buffers

    def _check_indices(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"expected indices within [0, {len(self)}), got {idx.min()}..{idx.max()}")
        return idx % max(len(self), 1)

    def _audio_dtype(self) -> torch.dtype:
        return torch.float16 if self.feature_config.audio_dtype == "float16" else torch.float32

    def _read_rows(self, column: str, locations: np.ndarray, out: np.ndarray) -> None:
        # Sorted by file position, so a batch reads each file front to back.
        order = np.lexsort((locations[:, 1], locations[:, 0]))
        for k in order:
            shard = self._shards[int(locations[k, 0])]
            self._readers.read(shard, column, int(locations[k, 1]), out[k])

    def close(self) -> None:
        """Close the files this process opened (the dataset can still be read: they reopen)."""
        self._readers.close()

    def __enter__(self) -> "ShardDataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = ShardReaders()
        return state

    def __del__(self) -> None:
        readers = self.__dict__.get("_readers")
        if readers is not None:
            readers.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(items={len(self)}, augmented={int(self.is_augmented.sum())}, "
                f"shards={len(self._shards)}, classes={len(self.classes)}, with_video={self.with_video})")


class _Expectation:
    """The class list and feature config every shard must match: the caller's, or else the
    first shard's."""

    def __init__(self, classes: Optional[Sequence[str]], config: Optional[FeatureConfig]) -> None:
        self.classes = None if classes is None else list(classes)
        self.config = None if config is None else to_dict(config)
        self.classes_from = self.config_from = "the requested"

    def check(self, path: Path, attrs: Dict[str, Any]) -> None:
        if self.classes is None:
            self.classes, self.classes_from = list(attrs["classes"]), str(path)
        if self.config is None:
            self.config, self.config_from = dict(attrs["feature_config"]), str(path)
        if list(attrs["classes"]) != self.classes:
            raise ConfigMismatchError(
                f"{path}: expected the class list of {self.classes_from} {self.classes}, got {attrs['classes']} "
                f"(extract every split with one list: avsc-features extract ... --classes {','.join(self.classes)})"
            )
        diff = config_diff(self.config, attrs["feature_config"])
        if diff:
            raise ConfigMismatchError(f"{path}: feature config differs from {self.config_from}'s: {'; '.join(diff)}")


def _scan_folder(folder: Path, expected: _Expectation) -> _Folder:
    """Read a folder's index, each shard's attributes and metadata columns."""
    index = load_index(folder)
    if not index["shards"]:
        raise ValueError(f"{folder}: expected shards in the index, got none")
    shards, metas, shard_of, row_of, refs, partners = [], [], [], [], [], []
    video_source = None
    for number, entry in enumerate(index["shards"]):
        path = folder / entry["file"]
        shard, attrs = open_shard_file(path)
        expected.check(path, attrs)
        _check_blocks(shard, from_dict(FeatureConfig, expected.config, str(path)))
        if shard.rows != entry["rows"]:
            raise ValueError(f"{path}: {shard.rows} rows, but the index lists {entry['rows']}; rebuild the index")
        has_refs = REF_COLUMNS[0] in attrs["datasets"]
        has_partner = PARTNER_COLUMN in attrs["datasets"]
        columns = read_columns(path, META_COLUMNS + (REF_COLUMNS if has_refs else ())
                               + ((PARTNER_COLUMN,) if has_partner else ()))
        metas.append(columns)
        partners.append(columns[PARTNER_COLUMN] if has_partner else np.full(shard.rows, "", dtype="U1"))
        if has_refs:
            refs.append(columns)
            video_source = _video_source(attrs, path, video_source)
        shards.append(shard)
        shard_of.append(np.full(shard.rows, number, dtype=np.int64))
        row_of.append(np.arange(shard.rows, dtype=np.int64))
    if refs and len(refs) != len(shards):
        raise ValueError(f"{folder}: expected video references in all shards or none, got {len(refs)} of {len(shards)}")
    meta = {name: np.concatenate([m[name] for m in metas]) for name in META_COLUMNS}
    ref = None
    if refs:
        ref = tuple(np.concatenate([r[name] for r in refs]) for name in REF_COLUMNS)
    return _Folder(folder, shards, meta, np.concatenate(shard_of), np.concatenate(row_of), video_source, ref,
                   np.concatenate(partners))


def _check_blocks(shard: ShardFile, config: FeatureConfig) -> None:
    wanted = [("audio", shard.audio, config.audio_shape, config.audio_dtype)]
    if shard.video is not None:
        wanted.append(("video", shard.video, config.video_shape, "uint8"))
    for name, block, shape, dtype in wanted:
        if block.shape != shape or block.dtype != dtype:
            raise ValueError(f"{shard.path}: expected {name} rows {shape} {dtype}, got {block.shape} {block.dtype}")


def _video_source(attrs: Dict[str, Any], path: Path, previous: Optional[str]) -> str:
    source = attrs.get("video_source")
    if not isinstance(source, str) or not source:
        raise ValueError(f"{path}: expected a 'video_source' attribute naming the originals' folder, got {source!r}")
    if previous is not None and source != previous:
        raise ValueError(f"{path}: expected video_source {previous!r} as in the other shards, got {source!r}")
    return source


def _resolve_refs(folder: _Folder, source: _Folder, base: int) -> np.ndarray:
    """`(rows, 2)` int64 (shard number, row) of the original frames each augmented row names."""
    if any(s.video is None for s in source.shards):
        raise ValueError(f"{source.path}: expected frames in the video source of {folder.path}, got audio-only shards")
    lookup = {(c, int(s)): k for k, (c, s) in enumerate(zip(source.meta["clip_id"], source.meta["segment"]))}
    ref_clip, ref_segment = folder.refs
    found = np.array([lookup.get((c, int(s)), -1) for c, s in zip(ref_clip, ref_segment)], dtype=np.int64)
    bad = np.flatnonzero(found < 0)
    if bad.size:
        first = int(bad[0])
        raise ValueError(
            f"{folder.path}: expected every video reference to resolve in {source.path}, got {bad.size} "
            f"that do not, e.g. clip {ref_clip[first]!r} segment {int(ref_segment[first])}"
        )
    return np.stack([source.shard_of[found] + base, source.row_of[found]], axis=1)
