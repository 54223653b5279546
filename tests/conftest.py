"""Shared fixtures: tiny data sets built in temporary folders, the real mini clips, and a plain
h5py reader to check shard contents against."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest

from avsc_pipeline import testing

# Real TAU clips beside a development checkout (`../shared/data/tau-av-street-mini`); a user's
# clone has none, so the tests that need them skip.
SHARED_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau-av-street-mini"


@pytest.fixture(scope="session")
def tau_root(tmp_path_factory) -> Path:
    """A 6-clip, 3-second data set in the TAU layout (read-only for tests: copy to modify)."""
    return testing.make_tau_dataset(tmp_path_factory.mktemp("tau") / "ds", n_clips=6, seconds=3.0)


@pytest.fixture
def shared_mini() -> Path:
    """The real clips in ../shared/data/tau-av-street-mini; skips where that folder is absent."""
    if not (SHARED_MINI / "meta.csv").is_file():
        pytest.skip(f"real mini clips not found at {SHARED_MINI} (a user's clone has no ../shared)")
    return SHARED_MINI


def _kill_when_shards(command, folder: Path, count: int, timeout: float = 120.0) -> int:
    """Start `command`, SIGKILL it once `folder` holds `count` finished shards (the event), or
    when it exits first; returns how many finished shards the folder held after the kill."""
    import os
    import signal
    import subprocess
    import time

    from avsc_pipeline.storage.shards import list_shards

    proc = subprocess.Popen(list(command))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(list_shards(folder)) < count and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list_shards(folder))


@pytest.fixture(scope="session")
def kill_when_shards() -> Callable[..., int]:
    """`kill_when_shards(command, folder, count)`: a crash at a chosen point of a shard-writing run."""
    return _kill_when_shards


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
