"""Shard writer atomicity, attribute reading, and the memmap-backed ShardReader."""

import pickle

import h5py
import numpy as np
import pytest

from avsc_pipeline.config import FeatureConfig
from avsc_pipeline.storage.reader import ShardReader
from avsc_pipeline.storage.shards import ShardWriter, read_attrs, shard_attrs, stage_one_columns
from avsc_pipeline.testing import write_random_shard


def test_reader_equals_direct_h5py_reads(tmp_path):
    path = write_random_shard(tmp_path / "shard-00000.h5", 23, seed=4)
    reader = ShardReader(path)
    with h5py.File(path, "r") as handle:
        for row in (0, 7, 22):
            np.testing.assert_array_equal(reader.read("audio", row), handle["audio"][row])
            np.testing.assert_array_equal(reader.read("video", row), handle["video"][row])
            assert reader.read("label", row) == handle["label"][row]
            assert reader.read("clip_id", row) == handle["clip_id"].asstr()[row]
    assert len(reader) == 23 and reader.has("video") and not reader.has("nope")
    with pytest.raises(KeyError, match="no dataset 'nope'"):
        reader.read("nope", 0)
    clone = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker receives
    assert "closed" in repr(clone)
    np.testing.assert_array_equal(clone.read("audio", 3), reader.read("audio", 3))
    reader.close()
    clone.close()
    assert "closed" in repr(reader)


def test_reader_handles_chunked_datasets(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("audio", data=np.arange(40, dtype=np.float32).reshape(10, 4), chunks=(1, 4),
                              compression="gzip")
    with ShardReader(path) as reader:
        np.testing.assert_array_equal(reader.read("audio", 3), [12, 13, 14, 15])


def test_writer_leaves_nothing_on_error(tmp_path):
    cfg = FeatureConfig()
    path = tmp_path / "shard-00000.h5"
    with pytest.raises(RuntimeError):
        with ShardWriter(path, stage_one_columns(cfg, with_video=False), shard_attrs(["a"], cfg)) as writer:
            writer.add(audio=np.zeros((1,) + cfg.audio_shape), label=[0], clip_id=["c"], segment=[0],
                       identifier=["i"], variant=["orig"])
            raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


def test_writer_checks_columns_and_shapes(tmp_path):
    cfg = FeatureConfig()
    writer = ShardWriter(tmp_path / "s.h5", stage_one_columns(cfg, with_video=False), shard_attrs(["a"], cfg))
    with pytest.raises(ValueError, match="expected columns"):
        writer.add(audio=np.zeros((1,) + cfg.audio_shape))
    with pytest.raises(ValueError, match=r"expected rows of shape \(6, 128, 39\)"):
        writer.add(audio=np.zeros((1, 6, 64, 39)), label=[0], clip_id=["c"], segment=[0], identifier=["i"],
                   variant=["orig"])
    with pytest.raises(ValueError, match="equal row counts"):
        writer.add(audio=np.zeros((2,) + cfg.audio_shape), label=[0], clip_id=["c"], segment=[0],
                   identifier=["i"], variant=["orig"])


def test_read_attrs_rejects_foreign_files(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot open as HDF5"):
        read_attrs(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as handle:
        handle["a"] = [1]
    with pytest.raises(ValueError, match="not an avsc-pipeline shard"):
        read_attrs(tmp_path / "y.h5")
