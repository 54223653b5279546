"""Shared fixtures: tiny data sets built in temporary folders, the real mini clips, and a plain
h5py reader to check shard contents against."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest

from avsc_pipeline import testing


@pytest.fixture(scope="session")
def tau_root(tmp_path_factory) -> Path:
    """A 6-clip, 3-second data set in the TAU layout (read-only for tests: copy to modify)."""
    return testing.make_tau_dataset(tmp_path_factory.mktemp("tau") / "ds", n_clips=6, seconds=3.0)


@pytest.fixture
def shared_mini() -> Path:
    """The real clips in ../shared/data/tau-av-street-mini; skips where that folder is absent."""
    root = testing.shared_mini()
    if root is None:
        pytest.skip(f"real mini clips not found at {testing.SHARED_MINI} (a user's clone has no ../shared)")
    return root


@pytest.fixture(scope="session")
def small_pair(tmp_path_factory) -> Path:
    """`train` (2 shards, 32x32 frames) and `train-aug` referring to it (read-only for tests)."""
    root = tmp_path_factory.mktemp("pair")
    testing.write_random_folder(root / "train", (24, 16), testing.SMALL_FEATURES, identifiers=3)
    testing.write_augmented_folder(root / "train-aug", root / "train", testing.SMALL_FEATURES)
    return root


def _h5_rows(path: Path) -> Dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as handle:
        return {k: (handle[k].asstr()[()] if h5py.check_string_dtype(handle[k].dtype) else handle[k][()])
                for k in handle}


@pytest.fixture(scope="session")
def h5_rows() -> Callable[[Path], Dict[str, np.ndarray]]:
    """`h5_rows(path)`: every column of a shard straight from h5py (the independent reference)."""
    return _h5_rows
