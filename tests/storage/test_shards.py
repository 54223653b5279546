"""The shard writer (atomic, checked columns) and the attribute reader."""

import h5py
import numpy as np
import pytest

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.storage.shards import ShardWriter, read_attrs, shard_attrs, stage_one_columns


def test_writer_leaves_nothing_on_error(tmp_path):
    cfg = FeatureConfig()
    path = tmp_path / "shard-00000.h5"
    with pytest.raises(RuntimeError):
        with ShardWriter(path, stage_one_columns(cfg, with_video=False), shard_attrs(["a"], cfg)) as writer:
            writer.add(audio=np.zeros((1,) + cfg.audio_shape), label=[0], clip_id=["c"], segment=[0],
                       identifier=["i"], variant=["orig"], audio_file=["c.wav"])
            raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


def test_writer_checks_columns_and_shapes(tmp_path):
    cfg = FeatureConfig()
    writer = ShardWriter(tmp_path / "s.h5", stage_one_columns(cfg, with_video=False), shard_attrs(["a"], cfg))
    with pytest.raises(ValueError, match="expected columns"):
        writer.add(audio=np.zeros((1,) + cfg.audio_shape))
    with pytest.raises(ValueError, match=r"expected rows of shape \(6, 128, 39\)"):
        writer.add(audio=np.zeros((1, 6, 64, 39)), label=[0], clip_id=["c"], segment=[0], identifier=["i"],
                   variant=["orig"], audio_file=["c.wav"])
    with pytest.raises(ValueError, match="equal row counts"):
        writer.add(audio=np.zeros((2,) + cfg.audio_shape), label=[0], clip_id=["c"], segment=[0],
                   identifier=["i"], variant=["orig"], audio_file=["c.wav"])


def test_read_attrs_rejects_foreign_files(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="cannot open as HDF5"):
        read_attrs(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as handle:
        handle["a"] = [1]
    with pytest.raises(ValueError, match="not an avsc-pipeline shard"):
        read_attrs(tmp_path / "y.h5")
