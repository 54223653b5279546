"""Row reads through memory maps at the HDF5 offsets, equal to h5py's, with an h5py fallback."""

import pickle

import h5py
import numpy as np
import pytest

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.storage.shard_io import ShardReaders, open_shard_file
from avsc_pipeline.testing import write_random_shard


def test_row_reads_equal_direct_h5py_reads(tmp_path):
    path = write_random_shard(tmp_path / "shard-00000.h5", 23, seed=4)
    shard, attrs = open_shard_file(path)
    assert shard.rows == 23 and attrs["rows"] == 23 and shard.audio.offset is not None
    readers = ShardReaders()
    audio = np.empty(shard.audio.shape, shard.audio.dtype)
    video = np.empty(shard.video.shape, shard.video.dtype)
    with h5py.File(path, "r") as handle:
        for row in (0, 7, 22):
            readers.read(shard, "audio", row, audio)
            readers.read(shard, "video", row, video)
            np.testing.assert_array_equal(audio, handle["audio"][row])
            np.testing.assert_array_equal(video, handle["video"][row])
    with pytest.raises(IndexError, match=r"expected a row in \[0, 23\)"):
        readers.read(shard, "audio", 23, audio)
    clone = pickle.loads(pickle.dumps(readers))  # what a spawned DataLoader worker receives
    clone.read(shard, "audio", 3, audio)
    readers.close()
    clone.close()
    assert readers.open_files == 0


def test_row_reads_fall_back_to_h5py_for_chunked_datasets(tmp_path):
    cfg = FeatureConfig()
    path = write_random_shard(tmp_path / "c.h5", 5, with_video=False)
    with h5py.File(path, "r") as handle:
        data = handle["audio"][()]
    with h5py.File(path, "r+") as handle:
        del handle["audio"]
        handle.create_dataset("audio", data=data, chunks=(1,) + cfg.audio_shape, compression="gzip")
    shard, _ = open_shard_file(path)
    assert shard.audio.offset is None
    out = np.empty(cfg.audio_shape, np.float32)
    readers = ShardReaders()
    readers.read(shard, "audio", 3, out)
    np.testing.assert_array_equal(out, data[3])
    readers.close()
