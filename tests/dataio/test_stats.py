"""Per-channel audio statistics against numpy, stored and refused when stale."""

from __future__ import annotations

import numpy as np
import pytest

from avsc_pipeline.dataio.stats import compute_audio_stats, ensure_audio_stats, load_audio_stats, save_audio_stats
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import SMALL_FEATURES, write_random_folder, write_random_shard


def test_audio_stats_equal_numpy_and_detect_staleness(tmp_path, h5_rows):
    folder = write_random_folder(tmp_path / "train", (20, 30), SMALL_FEATURES)
    audio = np.concatenate([h5_rows(folder / f"shard-0000{i}.h5")["audio"] for i in range(2)]).astype(np.float64)
    stats = compute_audio_stats(folder, block_rows=7)
    np.testing.assert_allclose(stats.mean, audio.mean(axis=(0, 2, 3)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.std, audio.std(axis=(0, 2, 3)), rtol=1e-9)
    assert stats.rows == 50
    stats = compute_audio_stats(folder)
    assert ensure_audio_stats(folder) == stats and (folder / "audio_stats.json").is_file()
    assert load_audio_stats(folder) == stats
    write_random_shard(folder / "shard-00002.h5", 10, SMALL_FEATURES, seed=9)
    build_index(folder)
    with pytest.raises(ValueError, match="stale"):
        load_audio_stats(folder)
    assert ensure_audio_stats(folder).rows == 60
    save_audio_stats(stats, folder, "other.json")
    with pytest.raises(FileNotFoundError):
        load_audio_stats(folder, "missing.json")
