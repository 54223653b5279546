"""The one reader of whole shard columns (labels, ids, references) and of column blocks.

Every reader of per-row datasets other than the feature-row reads of training
(:mod:`~avsc_pipeline.storage.shard_io`) goes through here, so a schema change touches one
package: the index and verification (:mod:`~avsc_pipeline.storage.index`), the training dataset's
metadata, the audio statistics, tests and tools.

Strings come back as fixed-width unicode arrays (`<U...`, no Python objects, so forked data
loader workers do not copy them on access); numbers in their stored dtype.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np

def read_columns(source: Any, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Every row of the named datasets of a shard.

    Args:
        source: a shard's path, or an open `h5py.File` (left open).
        names: dataset names; None reads every dataset of the file.

    Returns:
        `name -> (N, ...)` array: strings as fixed-width unicode, numbers as stored.

    Raises:
        ValueError: a named dataset is missing (naming the file and the datasets it has).
    """
    import h5py

    with _opened(source) as handle:
        names = list(handle.keys()) if names is None else list(names)
        out = {}
        for name in names:
            ds = _dataset(handle, name)
            if h5py.check_string_dtype(ds.dtype):
                out[name] = np.asarray(ds.asstr()[()], dtype=np.str_)
            else:
                out[name] = ds[()]
    return out


def column_blocks(source: Any, name: str, block_rows: int) -> Iterator[np.ndarray]:
    """The rows of one numeric dataset, `block_rows` at a time (the last block may be shorter).

    Args:
        source: a shard's path, or an open `h5py.File` (left open).
        name: the dataset, e.g. `audio`.
        block_rows: rows per block (>= 1); memory stays at one block.

    Raises:
        ValueError: the dataset is missing, or `block_rows < 1`.
    """
    if not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1:
        raise ValueError(f"expected block_rows >= 1, got {block_rows!r}")
    with _opened(source) as handle:
        ds = _dataset(handle, name)
        for start in range(0, ds.shape[0], block_rows):
            yield ds[start:start + block_rows]


@contextmanager
def _opened(source: Any) -> Iterator[Any]:
    """`source` itself when it is an open file, else the file at that path, closed afterwards."""
    import h5py

    if isinstance(source, (h5py.File, h5py.Group)):
        yield source
        return
    with h5py.File(os.fspath(source), "r") as handle:
        yield handle


def _dataset(handle: Any, name: str) -> Any:
    if name not in handle:
        raise ValueError(f"{handle.file.filename}: expected dataset {name!r}, got only {sorted(handle.keys())}")
    return handle[name]
