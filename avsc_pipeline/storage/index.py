"""The index of a folder of shards, and verification of shards.

`OUT/<split>/index.json` lists the shards with their row counts and per-class counts, the
feature config and its hash, the class list, and every clip that was skipped with its reason.
Training maps each item to `(shard, row)` through it and never guesses paths.

Augmented shards (`OUT/<split>-aug/`, written by `avsc-features augment`) hold no video: each row
refers to the stage-one row whose frames it uses, `(video_ref_clip, video_ref_segment)` in the
folder named by the shard attribute `video_source` (relative to the augmented folder, e.g.
`../train`). Their index also records `video_source`, and :func:`verify_folder` checks that
every reference resolves to a row of the source folder with the same label.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from avsc_pipeline.atomic import atomic_open
from avsc_pipeline.config import config_diff
from avsc_pipeline.storage.columns import column_blocks, read_columns
from avsc_pipeline.storage.shards import (
    AUGMENT_VARIANTS, SCHEMA_VERSION, Column, list_shards, read_attrs,
)
from avsc_pipeline.storage.versions import migrate

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"


def _rows(folder: "str | os.PathLike[str]") -> Iterator[Tuple[Tuple[str, int], str, int, int]]:
    """`((clip_id, segment), shard file name, row, label)` of every row of a folder's shards,
    reading only those columns."""
    for path in list_shards(folder):
        columns = read_columns(path, ("clip_id", "segment", "label"))
        for row, (clip_id, segment, label) in enumerate(zip(columns["clip_id"], columns["segment"], columns["label"])):
            yield (str(clip_id), int(segment)), path.name, row, int(label)


def row_labels(folder: "str | os.PathLike[str]") -> Dict[Tuple[str, int], int]:
    """`(clip_id, segment) -> label` of every row of a folder's shards."""
    return {key: label for key, _, _, label in _rows(folder)}


def row_locations(folder: "str | os.PathLike[str]") -> Dict[Tuple[str, int], Tuple[str, int]]:
    """`(clip_id, segment) -> (shard file name, row)` for every row of a folder's shards.

    For tools and tests that follow an augmented row's video reference
    (`video_ref_clip`, `video_ref_segment`) to its stage-one row. Training resolves the same key
    from the metadata columns it has already read (:class:`~avsc_pipeline.dataio.dataset.ShardDataset`),
    and :func:`verify_references` checks it through :func:`row_labels`.
    """
    return {key: (name, row) for key, name, row, _ in _rows(folder)}


def folder_attrs(folder: "str | os.PathLike[str]") -> Dict[str, Any]:
    """The attributes of a folder's first shard, after checking every shard has its config and classes.

    Raises:
        ValueError: no shards, an unreadable shard, or shards that disagree.
    """
    shards = list_shards(folder)
    if not shards:
        raise ValueError(f"{folder}: no shard-*.h5 files")
    first = read_attrs(shards[0])
    for path in shards[1:]:
        _check_same(first, read_attrs(path), shards[0], path)
    return first


def write_json_atomic(data: Any, path: "str | os.PathLike[str]") -> None:
    """Write JSON to `path` atomically (:func:`avsc_pipeline.atomic.atomic_open`)."""
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)


def _class_counts(path: Path, classes: List[str]) -> Dict[str, int]:
    labels = read_columns(path, ["label"])["label"]
    counts = Counter(int(v) for v in labels)
    out = {name: counts.get(i, 0) for i, name in enumerate(classes)}
    if counts.get(-1):
        out["<unknown>"] = counts[-1]
    return out


def build_index(folder: "str | os.PathLike[str]") -> Dict[str, Any]:
    """Scan the shards of one folder and write its `index.json`.

    Raises:
        ValueError: no shards, or shards made with different feature configs or class lists.
    """
    folder = Path(folder)
    shards = list_shards(folder)
    if not shards:
        raise ValueError(f"{folder}: no shard-*.h5 files to index")
    entries, skipped, first = [], [], None
    for path in shards:
        attrs = read_attrs(path)
        if first is None:
            first = attrs
        _check_same(first, attrs, shards[0], path)
        counts = _class_counts(path, first["classes"])
        entries.append({"file": path.name, "rows": int(attrs["rows"]), "class_counts": counts})
        skipped.extend(attrs.get("skipped", []))
    total = Counter()
    for entry in entries:
        total.update(entry["class_counts"])
    index = {
        "schema_version": SCHEMA_VERSION,
        "classes": first["classes"],
        "feature_config": first["feature_config"],
        "config_hash": first["config_hash"],
        "shards": entries,
        "rows": sum(e["rows"] for e in entries),
        "class_counts": dict(total),
        "skipped": skipped,
    }
    if "video_source" in first:
        index["video_source"] = first["video_source"]
        index["augment_config"] = json.loads(first.get("augment_config", "{}"))
    write_json_atomic(index, folder / INDEX_NAME)
    logger.info("%s: indexed %d shards, %d rows, %d skipped", folder, len(entries), index["rows"], len(skipped))
    return index


def _check_same(first: Dict[str, Any], attrs: Dict[str, Any], first_path: Path, path: Path) -> None:
    if attrs["classes"] != first["classes"]:
        raise ValueError(f"{path}: class list {attrs['classes']} differs from {first_path.name}'s {first['classes']}")
    diff = config_diff(first["feature_config"], attrs["feature_config"])
    if diff:
        raise ValueError(f"{path}: feature config differs from {first_path.name}'s: {'; '.join(diff)}")


def load_index(folder: "str | os.PathLike[str]") -> Dict[str, Any]:
    """Read `index.json` of a shard folder.

    An index of an earlier schema version is migrated to today's meaning
    (:func:`~avsc_pipeline.storage.versions.migrate`); `schema_version` keeps the stored value.

    Raises:
        FileNotFoundError: no index (run `avsc-features index`).
        ValueError: a schema version this package does not know.
    """
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no index; build it with `avsc-features index {folder}`")
    with open(path, encoding="utf-8") as handle:
        return migrate(json.load(handle), str(path))


def folder_column(folder: "str | os.PathLike[str]", name: str) -> Optional[np.ndarray]:
    """One column of every row of an indexed folder, shard by shard in index order (the order of
    the training dataset's rows), or None when a shard lacks it (e.g. `audio_file` in shards of
    schema 1).

    Args:
        folder: a shard folder with an `index.json`.
        name: the dataset, e.g. `audio_file`.

    Returns:
        `(N,)` array as :func:`~avsc_pipeline.storage.columns.read_columns` gives it, or None.
    """
    folder = Path(folder)
    parts = []
    for entry in load_index(folder)["shards"]:
        path = folder / entry["file"]
        if name not in read_attrs(path)["datasets"]:
            return None
        parts.append(read_columns(path, [name])[name])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.str_)


def shard_folders(root: "str | os.PathLike[str]") -> List[Path]:
    """`root` itself if it holds shards, else its sub-folders that do (e.g. train, evaluate)."""
    root = Path(root)
    if list_shards(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and list_shards(p)) if root.is_dir() else []


def verify_shards(folder: "str | os.PathLike[str]",
                  schema_of: Callable[[Dict[str, Any], str], Dict[str, Column]]) -> List[str]:
    """Check every shard of a folder; returns one message per problem (empty when all good).

    Checks: each file opens, has the schema attributes, datasets of the right shapes and dtypes
    and equal lengths, finite audio, labels within the class list, one config and class list
    across shards, and an index that matches the shards. For augmented shards (with a
    `video_source` attribute) also: known variants, and every video reference resolves to a
    source row with the same label (:func:`verify_references`).

    Args:
        folder: a shard folder.
        schema_of: `schema_of(attrs, source)` gives the columns a shard with these attributes
            must hold (stage one knows its feature config: `features.verify.verify_folder`);
            raises ValueError or KeyError for attributes it cannot read.
    """
    problems: List[str] = []
    folder = Path(folder)
    shards = list_shards(folder)
    if not shards:
        return [f"{folder}: no shard-*.h5 files"]
    first = None
    for path in shards:
        try:
            attrs = read_attrs(path)
            if first is None:
                first = attrs
            _check_same(first, attrs, shards[0], path)
            columns = schema_of(attrs, str(path))
        except (ValueError, KeyError) as err:
            problems.append(str(err))
            continue
        problems.extend(_verify_shard(path, attrs, columns))
    problems.extend(_verify_index(folder, shards))
    if first is not None and "video_source" in first:
        problems.extend(verify_references(folder, first))
    return problems


def verify_references(folder: "str | os.PathLike[str]", attrs: Optional[Dict[str, Any]] = None) -> List[str]:
    """Check an augmented folder's video references against its `video_source` folder.

    Every row's `(video_ref_clip, video_ref_segment)` must be a row of the source folder's shards
    with the row's label, the source must have the same feature config and class list, and every
    `variant` must be an augmentation's name. Returns one message per problem.
    """
    folder = Path(folder)
    attrs = attrs if attrs is not None else read_attrs(list_shards(folder)[0])
    source = (folder / attrs["video_source"]).resolve()
    try:
        source_attrs = folder_attrs(source)
        _check_same(attrs, source_attrs, folder, source)
    except ValueError as err:
        return [f"{folder}: video source {attrs['video_source']!r}: {err}"]
    keys = row_labels(source)
    problems = []
    for path in list_shards(folder):
        try:
            problems.extend(_verify_shard_references(path, keys, source))
        except (OSError, ValueError) as err:
            problems.append(f"{path}: cannot read references ({err})")
    return problems


def _verify_shard_references(path: Path, keys: Dict[Tuple[str, int], int], source: Path) -> List[str]:
    columns = read_columns(path, ("video_ref_clip", "video_ref_segment", "label", "variant"))
    clips, segments = columns["video_ref_clip"].tolist(), columns["video_ref_segment"]
    labels, variants = columns["label"], columns["variant"].tolist()
    problems = []
    missing = [(c, int(s)) for c, s in zip(clips, segments) if (c, int(s)) not in keys]
    if missing:
        problems.append(f"{path}: {len(missing)} video references do not resolve in {source}, e.g. {missing[0]}")
    wrong = [(c, int(s)) for c, s, l in zip(clips, segments, labels) if keys.get((c, int(s)), l) != l]
    if wrong:
        problems.append(f"{path}: {len(wrong)} rows have another label than their video row, e.g. {wrong[0]}")
    unknown = sorted(set(variants) - set(AUGMENT_VARIANTS))
    if unknown:
        problems.append(f"{path}: expected variants in {list(AUGMENT_VARIANTS)}, got {unknown}")
    return problems


def _verify_shard(path: Path, attrs: Dict[str, Any], columns: Dict[str, Any]) -> List[str]:
    problems = []
    rows = attrs.get("rows")
    for name, column in columns.items():
        if name not in attrs["datasets"]:
            if name != "audio" or "audio" not in attrs["datasets"]:
                problems.append(f"{path}: missing dataset {name!r}")
            continue
        shape, dtype = attrs["datasets"][name]
        want = (rows,) + column.shape
        if tuple(shape) != want:
            problems.append(f"{path}: dataset {name!r}: expected shape {want}, got {tuple(shape)}")
        if column.dtype != "str" and dtype != column.dtype:
            problems.append(f"{path}: dataset {name!r}: expected dtype {column.dtype}, got {dtype}")
    n_classes = len(attrs["classes"])
    try:
        labels = read_columns(path, ["label"])["label"]
        bad = labels[(labels < -1) | (labels >= n_classes)]
        if bad.size:
            problems.append(f"{path}: {bad.size} labels outside [-1, {n_classes - 1}], e.g. {int(bad[0])}")
        start = 0
        for block in column_blocks(path, "audio", 256):
            if not np.all(np.isfinite(block)):
                problems.append(f"{path}: non-finite audio values in rows {start}..{start + len(block) - 1}")
                break
            start += len(block)
    except (OSError, ValueError) as err:
        problems.append(f"{path}: cannot read ({err})")
    return problems


def _verify_index(folder: Path, shards: List[Path]) -> List[str]:
    try:
        index = load_index(folder)
    except FileNotFoundError as err:
        return [str(err)]
    listed = {e["file"]: e["rows"] for e in index.get("shards", [])}
    actual = {p.name: p for p in shards}
    problems = [f"{folder / name}: listed in the index but missing" for name in sorted(set(listed) - set(actual))]
    problems += [f"{folder / name}: not in the index (rebuild it)" for name in sorted(set(actual) - set(listed))]
    for name in sorted(set(listed) & set(actual)):
        try:
            rows = read_attrs(actual[name]).get("rows")
        except ValueError:
            continue  # already reported by the shard checks
        if rows != listed[name]:
            problems.append(f"{folder / name}: {rows} rows, but the index lists {listed[name]}")
    return problems
