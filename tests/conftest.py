"""Shared fixtures: tiny data sets built in temporary folders, and the real mini clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from avsc_pipeline.testing import make_tau_dataset

SHARED_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau-av-street-mini"


@pytest.fixture(scope="session")
def tau_root(tmp_path_factory) -> Path:
    """A 6-clip, 3-second data set in the TAU layout (read-only for tests: copy to modify)."""
    return make_tau_dataset(tmp_path_factory.mktemp("tau") / "ds", n_clips=6, seconds=3.0)


@pytest.fixture
def shared_mini() -> Path:
    """The real clips in ../shared/data/tau-av-street-mini; skips where that folder is absent."""
    if not (SHARED_MINI / "meta.csv").is_file():
        pytest.skip(f"real mini clips not found at {SHARED_MINI} (a user's clone has no ../shared)")
    return SHARED_MINI
