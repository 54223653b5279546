"""The index of a folder of shards, and verification of shards.

`OUT/<split>/index.json` lists the shards with their row counts and per-class counts, the
feature config and its hash, the class list, and every clip that was skipped with its reason.
Training maps each item to `(shard, row)` through it and never guesses paths.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from avsc_pipeline.config import config_diff
from avsc_pipeline.storage.shards import SCHEMA_VERSION, list_shards, read_attrs

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"


def write_json_atomic(data: Any, path: "str | os.PathLike[str]") -> None:
    """Write JSON to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _class_counts(path: Path, classes: List[str]) -> Dict[str, int]:
    import h5py

    with h5py.File(path, "r") as handle:
        labels = handle["label"][()]
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

    Raises:
        FileNotFoundError: no index (run `avsc-features index`).
    """
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no index; build it with `avsc-features index {folder}`")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def shard_folders(root: "str | os.PathLike[str]") -> List[Path]:
    """`root` itself if it holds shards, else its sub-folders that do (e.g. train, evaluate)."""
    root = Path(root)
    if list_shards(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and list_shards(p)) if root.is_dir() else []


def verify_folder(folder: "str | os.PathLike[str]") -> List[str]:
    """Check every shard of a folder; returns one message per problem (empty when all good).

    Checks: each file opens, has the schema attributes, datasets of the right shapes and dtypes
    and equal lengths, finite audio, labels within the class list, one config and class list
    across shards, and an index that matches the shards.
    """
    from avsc_pipeline.storage.shards import feature_config_of, stage_one_columns

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
            config = feature_config_of(attrs, source=str(path))
        except (ValueError, KeyError) as err:
            problems.append(str(err))
            continue
        columns = stage_one_columns(config, with_video="video" in attrs["datasets"])
        problems.extend(_verify_shard(path, attrs, columns))
    problems.extend(_verify_index(folder, shards))
    return problems


def _verify_shard(path: Path, attrs: Dict[str, Any], columns: Dict[str, Any]) -> List[str]:
    import h5py

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
        with h5py.File(path, "r") as handle:
            labels = handle["label"][()]
            bad = labels[(labels < -1) | (labels >= n_classes)]
            if bad.size:
                problems.append(f"{path}: {bad.size} labels outside [-1, {n_classes - 1}], e.g. {int(bad[0])}")
            audio = handle["audio"]
            for start in range(0, audio.shape[0], 256):
                block = audio[start : start + 256]
                if not np.all(np.isfinite(block)):
                    problems.append(f"{path}: non-finite audio values in rows {start}..{start + len(block) - 1}")
                    break
    except (OSError, KeyError) as err:
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
