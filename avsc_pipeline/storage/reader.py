"""A lazy, process-safe reader of one shard, tuned for random single-sample reads.

Shards store numeric datasets contiguously, so a row is a fixed byte range of the file. The
reader maps each contiguous numeric dataset with `numpy.memmap` at the offset HDF5 reports,
which reads a random row as fast as a plain numpy memmap (h5py indexing is about 0.5x of that:
`bench/bench_shard_reads.py`). Strings and any chunked or compressed dataset go through h5py.

Files open on first use in the process that reads them (after a fork or in a DataLoader worker
the reader reopens), and `close()` releases them; pickling drops open handles.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np


class ShardReader:
    """Random access to the rows of one shard file.

    Args:
        path: the shard file.
    """

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = Path(path)
        self._pid: Optional[int] = None
        self._h5: Any = None
        self._maps: Dict[str, Any] = {}

    def __repr__(self) -> str:
        state = "open" if self._h5 is not None else "closed"
        return f"ShardReader({str(self.path)!r}, {state})"

    def __getstate__(self) -> Dict[str, Any]:
        return {"path": self.path, "_pid": None, "_h5": None, "_maps": {}}

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _ensure_open(self) -> None:
        import h5py

        if self._h5 is not None and self._pid == os.getpid():
            return
        self._h5, self._maps = None, {}  # a handle inherited through fork is not ours to use
        try:
            handle = h5py.File(self.path, "r")
        except OSError as err:
            raise ValueError(f"{self.path}: cannot open as HDF5 ({err})") from err
        for name, ds in handle.items():
            offset = ds.id.get_offset()
            numeric = not h5py.check_string_dtype(ds.dtype)
            if numeric and ds.chunks is None and ds.compression is None and offset is not None and ds.size:
                self._maps[name] = np.memmap(self.path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
            elif h5py.check_string_dtype(ds.dtype):
                self._maps[name] = ds.asstr()
            else:
                self._maps[name] = ds
        self._h5, self._pid = handle, os.getpid()

    def __len__(self) -> int:
        self._ensure_open()
        return int(self._h5.attrs.get("rows", len(next(iter(self._h5.values())))))

    def has(self, name: str) -> bool:
        """Whether the shard has dataset `name`."""
        self._ensure_open()
        return name in self._maps

    def read(self, name: str, row: int) -> Any:
        """Row `row` of dataset `name`: a numpy array (a copy), a number or a str."""
        self._ensure_open()
        try:
            source = self._maps[name]
        except KeyError:
            raise KeyError(f"{self.path}: no dataset {name!r} (has {sorted(self._maps)})") from None
        value = source[row]
        return np.array(value) if isinstance(value, np.ndarray) else value

    def column(self, name: str) -> np.ndarray:
        """Every row of a dataset (for small columns: labels, ids)."""
        self._ensure_open()
        return np.asarray(self._maps[name][()] if name in self._maps else self._h5[name][()])

    def close(self) -> None:
        """Release the memory maps and the HDF5 handle."""
        self._maps = {}
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5, self._pid = None, None
