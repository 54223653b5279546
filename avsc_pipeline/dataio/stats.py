"""Per-channel mean and std of the audio features, computed once and stored beside the shards.

`FOLDER/audio_stats.json` holds, for the 6 feature channels, the mean and the (population)
standard deviation over every row, mel band and frame of the folder's shards, with the feature
config hash and the shard list they were computed from. A file whose shards or config no longer
match the folder's index is refused as stale.

The statistics are streamed: each block of rows is reduced in float64 and blocks are merged
with Chan et al.'s pairwise update, so memory stays at one block.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from avsc_pipeline.storage.columns import column_blocks
from avsc_pipeline.storage.index import load_index, write_json_atomic

logger = logging.getLogger(__name__)

STATS_NAME = "audio_stats.json"
STATS_VERSION = 1


@dataclass(frozen=True)
class AudioStats:
    """Per-channel statistics of a shard folder's audio features.

    Attributes:
        mean: one value per feature channel.
        std: population standard deviation per channel.
        rows: rows reduced.
        config_hash: the shards' feature config hash.
        shards: `(file name, rows)` of each shard reduced.
    """

    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    rows: int
    config_hash: str
    shards: Tuple[Tuple[str, int], ...]

    def to_json(self) -> Dict[str, Any]:
        """JSON-safe dict, as stored in the file."""
        return {"version": STATS_VERSION, "mean": list(self.mean), "std": list(self.std), "rows": self.rows,
                "config_hash": self.config_hash, "shards": [list(s) for s in self.shards]}

    @classmethod
    def from_json(cls, data: Dict[str, Any], source: str = "audio stats") -> "AudioStats":
        """Inverse of :meth:`to_json`."""
        try:
            if data["version"] != STATS_VERSION:
                raise ValueError(f"{source}: expected version {STATS_VERSION}, got {data['version']!r}")
            return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]),
                       int(data["rows"]), str(data["config_hash"]),
                       tuple((str(f), int(n)) for f, n in data["shards"]))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source}: malformed audio statistics ({err!r})") from err


class _Moments:
    """Running count, mean and sum of squared deviations per channel (Chan et al.)."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def update(self, block: np.ndarray) -> None:
        """Add a `(n, C, F, T)` block."""
        x = block.astype(np.float64).transpose(1, 0, 2, 3).reshape(block.shape[1], -1)
        count = x.shape[1]
        if count == 0:
            return
        mean = x.mean(axis=1)
        m2 = ((x - mean[:, None]) ** 2).sum(axis=1)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta ** 2 * self.count * count / total
        self.count = total


def compute_audio_stats(folder: "str | os.PathLike[str]", block_rows: int = 256,
                        progress: bool = False) -> AudioStats:
    """Stream over a folder's shards (in index order) and reduce the audio features.

    Args:
        folder: a shard folder with an `index.json`.
        block_rows: rows read at a time.
        progress: show a progress bar.

    Raises:
        ValueError: the folder has no rows.
    """
    from tqdm import tqdm

    if not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"expected block_rows >= 1, got {block_rows!r}")
    folder = Path(folder)
    index = load_index(folder)
    if not index["rows"]:
        raise ValueError(f"{folder}: expected rows to compute audio statistics over, got none")
    moments: Optional[_Moments] = None
    rows = 0
    with tqdm(total=index["rows"], desc="audio stats", unit="row", disable=not progress) as bar:
        for entry in index["shards"]:
            for block in column_blocks(folder / entry["file"], "audio", block_rows):
                moments = moments or _Moments(block.shape[1])
                moments.update(block)
                rows += len(block)
                bar.update(len(block))
    std = np.sqrt(moments.m2 / moments.count)
    return AudioStats(tuple(moments.mean.tolist()), tuple(std.tolist()), rows,
                      index["config_hash"], _shard_list(index))


def _shard_list(index: Dict[str, Any]) -> Tuple[Tuple[str, int], ...]:
    return tuple((e["file"], int(e["rows"])) for e in index["shards"])


def save_audio_stats(stats: AudioStats, folder: "str | os.PathLike[str]", name: str = STATS_NAME) -> Path:
    """Write `FOLDER/name` atomically; returns its path."""
    path = Path(folder) / name
    write_json_atomic(stats.to_json(), path)
    return path


def load_audio_stats(folder: "str | os.PathLike[str]", name: str = STATS_NAME) -> AudioStats:
    """Read `FOLDER/name`, refusing statistics made from other shards or another config.

    Raises:
        FileNotFoundError: no statistics file.
        ValueError: malformed or stale (naming what differs).
    """
    folder = Path(folder)
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no audio statistics; compute them with ensure_audio_stats")
    with open(path, encoding="utf-8") as handle:
        stats = AudioStats.from_json(json.load(handle), str(path))
    problems = _staleness(stats, load_index(folder))
    if problems:
        raise ValueError(f"{path}: stale audio statistics ({'; '.join(problems)}); ensure_audio_stats recomputes them")
    return stats


def _staleness(stats: AudioStats, index: Dict[str, Any]) -> List[str]:
    problems = []
    if stats.config_hash != index["config_hash"]:
        problems.append(f"expected config hash {index['config_hash']}, got {stats.config_hash}")
    if stats.shards != _shard_list(index):
        problems.append(f"expected shards {list(_shard_list(index))}, got {list(stats.shards)}")
    return problems


def ensure_audio_stats(folder: "str | os.PathLike[str]", name: str = STATS_NAME,
                       progress: bool = False) -> AudioStats:
    """The folder's statistics: read when present and current, else computed and stored.

    A stale file (other shards or config) is recomputed and replaced, with a warning.
    """
    try:
        return load_audio_stats(folder, name)
    except FileNotFoundError:
        pass
    except ValueError as err:
        logger.warning("%s; recomputing", err)
    stats = compute_audio_stats(folder, progress=progress)
    path = save_audio_stats(stats, folder, name)
    logger.info("%s: audio statistics over %d rows written", path, stats.rows)
    return stats
