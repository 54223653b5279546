"""The one column reader: values equal h5py's, strings fixed-width, missing columns named."""

import h5py
import numpy as np
import pytest

from avsc_pipeline.storage.columns import column_blocks, read_columns
from avsc_pipeline.testing import SMALL_FEATURES, write_random_shard


@pytest.fixture
def shard(tmp_path):
    return write_random_shard(tmp_path / "shard-00000.h5", 23, SMALL_FEATURES, seed=3)


def test_columns_equal_h5py_reads_with_fixed_width_strings(shard, h5_rows):
    expected = h5_rows(shard)
    everything = read_columns(shard)
    assert sorted(everything) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(everything[name], values, err_msg=name)
    assert everything["clip_id"].dtype.kind == "U" and everything["label"].dtype == np.int16
    some = read_columns(shard, ["segment", "clip_id"])
    assert list(some) == ["segment", "clip_id"]


def test_an_open_file_is_read_and_left_open(shard):
    with h5py.File(shard, "r") as handle:
        labels = read_columns(handle, ["label"])["label"]
        assert handle.id.valid
        np.testing.assert_array_equal(labels, handle["label"][()])


def test_a_missing_column_names_the_file_and_what_it_has(shard):
    with pytest.raises(ValueError, match=r"shard-00000.h5: expected dataset 'video_ref_clip', got only \["):
        read_columns(shard, ["label", "video_ref_clip"])
    with pytest.raises(ValueError, match="expected dataset 'nothing'"):
        next(column_blocks(shard, "nothing", 4))


def test_blocks_cover_every_row_in_order(shard, h5_rows):
    blocks = list(column_blocks(shard, "audio", 10))
    assert [len(b) for b in blocks] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate(blocks), h5_rows(shard)["audio"])
    with pytest.raises(ValueError, match="expected block_rows >= 1, got 0"):
        next(column_blocks(shard, "audio", 0))
