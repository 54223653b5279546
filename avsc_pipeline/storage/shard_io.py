"""Row reads from shard files, opened lazily by the process that reads them.

Stage one writes each per-row column as one contiguous, uncompressed HDF5 dataset, so row `r`
of a column is `row_bytes` bytes at `offset + r * row_bytes` in the file. :class:`ShardReaders`
maps each file once per process and copies such rows straight into the caller's buffer (one
copy from the page cache, as fast as a numpy memmap and about 1.5x `os.preadv` per row,
`bench/bench_loader.py`); a chunked or filtered dataset (which has no single offset) is read
through h5py.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from avsc_pipeline.storage.shards import read_attrs

@dataclass(frozen=True)
class Block:
    """Where one fixed-shape column of a shard lives.

    Attributes:
        name: the dataset's name.
        shape: the shape of one row.
        dtype: numpy dtype name of the stored values.
        offset: byte offset of row 0 in the file for a contiguous, unfiltered dataset; None
            when rows must be read through h5py.
    """

    name: str
    shape: Tuple[int, ...]
    dtype: str
    offset: Optional[int]

    @property
    def row_bytes(self) -> int:
        """Bytes per row."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ShardFile:
    """A shard's path, row count and the feature columns that reads need."""

    path: str
    rows: int
    audio: Block
    video: Optional[Block]

    def block(self, column: str) -> Block:
        """The `audio` or `video` block."""
        block = self.audio if column == "audio" else self.video if column == "video" else None
        if block is None:
            raise ValueError(f"{self.path}: expected column 'audio' or 'video' present in the shard, got {column!r}")
        return block


def open_shard_file(path: "str | os.PathLike[str]") -> Tuple[ShardFile, Dict[str, Any]]:
    """Describe a shard for reading; returns it and its decoded attributes (the file is closed).

    Raises:
        ValueError: not a readable shard, or no `audio` dataset.
    """
    import h5py

    attrs = read_attrs(path)
    with h5py.File(path, "r") as handle:
        if "audio" not in handle:
            raise ValueError(f"{path}: expected an 'audio' dataset, got {sorted(handle.keys())}")
        audio = _block(handle["audio"])
        video = _block(handle["video"]) if "video" in handle else None
        rows = int(handle["audio"].shape[0])
    return ShardFile(str(path), rows, audio, video), attrs


def _block(ds: Any) -> Block:
    dtype = ds.dtype
    plain = ds.chunks is None and ds.compression is None and dtype.isnative and not ds.external
    offset = ds.id.get_offset() if plain and ds.shape[0] > 0 else None
    return Block(ds.name.lstrip("/"), tuple(int(n) for n in ds.shape[1:]), dtype.name,
                 None if offset is None else int(offset))


class ShardReaders:
    """The shard files one process has open, opened on first use.

    A copy made by `fork` (a DataLoader worker) notices the new process id and opens its own
    files; pickling (`spawn` workers) drops open files. :meth:`close` closes them all.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._maps: Dict[str, mmap.mmap] = {}
        self._arrays: Dict[Tuple[str, str], np.ndarray] = {}
        self._h5: Dict[str, Any] = {}

    def __getstate__(self) -> Dict[str, Any]:
        return {}  # open files do not travel to another process

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__()

    def read(self, shard: ShardFile, column: str, row: int, out: np.ndarray) -> None:
        """Read one row of `column` into `out`.

        Args:
            shard: the shard.
            column: `"audio"` or `"video"`.
            row: row number within the shard.
            out: array of the row's shape and the stored dtype, filled in place.
        """
        block = shard.block(column)
        if not 0 <= row < shard.rows:
            raise IndexError(f"{shard.path}: expected a row in [0, {shard.rows}), got {row}")
        if out.shape != block.shape or out.dtype != np.dtype(block.dtype):
            raise ValueError(
                f"{shard.path} [{column}]: expected a {block.dtype} buffer of shape {block.shape}, "
                f"got {out.dtype} {out.shape}"
            )
        self._check_process()
        if block.offset is None:
            self._h5file(shard.path)[column].read_direct(out.reshape((1,) + out.shape), np.s_[row:row + 1])
            return
        out[...] = self._array(shard, column, block)[row]

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            # Inherited through fork: those handles belong to the parent; open our own.
            self._maps, self._arrays, self._h5, self._pid = {}, {}, {}, os.getpid()

    def _array(self, shard: ShardFile, column: str, block: Block) -> np.ndarray:
        key = (shard.path, column)
        array = self._arrays.get(key)
        if array is None:
            mapped = self._maps.get(shard.path)
            if mapped is None:
                with open(shard.path, "rb") as handle:
                    mapped = self._maps[shard.path] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            end = block.offset + shard.rows * block.row_bytes
            if end > len(mapped):
                raise ValueError(f"{shard.path}: expected {column} to end at byte {end}, but the file has {len(mapped)}")
            array = np.ndarray((shard.rows,) + block.shape, np.dtype(block.dtype), mapped, block.offset)
            self._arrays[key] = array
        return array

    def _h5file(self, path: str) -> Any:
        import h5py

        handle = self._h5.get(path)
        if handle is None:
            handle = self._h5[path] = h5py.File(path, "r")
        return handle

    def close(self) -> None:
        """Close every file this process opened."""
        mine = os.getpid() == self._pid
        self._arrays = {}  # the views go first: a map with views cannot close
        if mine:
            for mapped in self._maps.values():
                mapped.close()
            for handle in self._h5.values():
                handle.close()
        self._maps, self._h5 = {}, {}

    @property
    def open_files(self) -> int:
        """How many files this process has open."""
        self._check_process()
        return len(self._maps) + len(self._h5)
