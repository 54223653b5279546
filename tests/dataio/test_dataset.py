"""ShardDataset: items equal a direct h5py read, lazy files, video references, refusals."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.errors import ConfigMismatchError
from avsc_pipeline.corpus.tau import TAU_CLASSES
from avsc_pipeline.testing import SMALL_FEATURES, write_augmented_folder, write_random_folder, write_random_shard


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory) -> Path:
    return write_random_folder(tmp_path_factory.mktemp("shards") / "train")


def test_items_equal_a_direct_h5py_read(train_folder, h5_rows):
    dataset = ShardDataset([train_folder])
    assert len(dataset) == 50
    position = 0
    for name in ("shard-00000.h5", "shard-00001.h5"):
        rows = h5_rows(train_folder / name)
        for row in range(len(rows["label"])):
            item = dataset[position]
            assert item["audio"].dtype == torch.float32 and item["audio"].shape == (6, 128, 39)
            assert item["video"].dtype == torch.uint8 and item["video"].shape == (2, 3, 224, 224)
            assert torch.equal(item["audio"], torch.from_numpy(rows["audio"][row]))
            assert torch.equal(item["video"], torch.from_numpy(rows["video"][row]))
            assert item["label"] == rows["label"][row] and item["segment"] == rows["segment"][row]
            assert item["clip_id"] == rows["clip_id"][row] and item["variant"] == rows["variant"][row]
            position += 1
    dataset.close()


def test_read_batch_keeps_the_requested_order(train_folder):
    dataset = ShardDataset([train_folder])
    order = [49, 3, 3, 21, 0]
    batch = dataset.read_batch(order)
    assert batch["audio"].shape == (5, 6, 128, 39) and batch["index"].tolist() == order
    for k, i in enumerate(order):
        item = dataset[i]
        assert torch.equal(batch["video"][k], item["video"]) and batch["clip_id"][k] == item["clip_id"]
    with pytest.raises(IndexError, match="expected indices"):
        dataset.read_batch([50])


def test_files_open_lazily_close_and_are_not_pickled(train_folder):
    dataset = ShardDataset([train_folder])
    assert dataset._readers.open_files == 0
    dataset.read_batch([0, 45])
    assert dataset._readers.open_files == 2
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._readers.open_files == 0
    assert torch.equal(copy[45]["audio"], dataset[45]["audio"])
    dataset.close()
    copy.close()
    assert dataset._readers.open_files == 0 and copy._readers.open_files == 0
    assert dataset[1]["label"] == dataset.labels[1]  # reopens after close


def test_augmented_rows_resolve_their_video(small_pair, h5_rows):
    dataset = ShardDataset([small_pair / "train", small_pair / "train-aug"])
    assert len(dataset) == 52 and int(dataset.is_augmented.sum()) == 12
    aug = h5_rows(small_pair / "train-aug" / "shard-00000.h5")
    originals = [h5_rows(small_pair / "train" / f"shard-0000{i}.h5") for i in range(2)]
    frames = {(c, int(s)): v for rows in originals
              for c, s, v in zip(rows["clip_id"], rows["segment"], rows["video"])}
    for row in range(12):
        item = dataset[40 + row]
        assert torch.equal(item["audio"], torch.from_numpy(aug["audio"][row]))
        expected = frames[(aug["video_ref_clip"][row], int(aug["video_ref_segment"][row]))]
        assert torch.equal(item["video"], torch.from_numpy(expected))
        assert item["variant"] == aug["variant"][row]


def test_augmented_folder_alone_reads_frames_from_its_source(small_pair):
    alone = ShardDataset([small_pair / "train-aug"])
    both = ShardDataset([small_pair / "train", small_pair / "train-aug"])
    assert len(alone) == 12
    assert torch.equal(alone.read_batch(range(12))["video"], both.read_batch(range(40, 52))["video"])


def test_unresolved_video_reference_is_an_error(tmp_path):
    write_random_folder(tmp_path / "train", (20,), SMALL_FEATURES)
    write_augmented_folder(tmp_path / "train-aug", tmp_path / "train", SMALL_FEATURES, bad_reference=True)
    with pytest.raises(ValueError, match="no-such-clip"):
        ShardDataset([tmp_path / "train", tmp_path / "train-aug"])
    assert len(ShardDataset([tmp_path / "train-aug"], with_video=False)) == 12


def test_refuses_a_different_feature_config_naming_the_field(tmp_path):
    write_random_folder(tmp_path / "a", (10,), SMALL_FEATURES)
    write_random_folder(tmp_path / "b", (10,), FeatureConfig(image_size=32, n_mels=64))
    with pytest.raises(ConfigMismatchError, match=r"n_mels: 128 != 64"):
        ShardDataset([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigMismatchError, match="image_size"):
        ShardDataset([tmp_path / "a"], feature_config=FeatureConfig())


def test_refuses_a_different_class_list(tmp_path):
    write_random_folder(tmp_path / "a", (10,), SMALL_FEATURES)
    write_random_folder(tmp_path / "b", (10,), SMALL_FEATURES, classes=list(TAU_CLASSES)[::-1])
    with pytest.raises(ConfigMismatchError, match="class list"):
        ShardDataset([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigMismatchError, match="class list"):
        ShardDataset([tmp_path / "a"], classes=["a", "b"])


def test_float16_audio_is_returned_as_float32(tmp_path, h5_rows):
    config = FeatureConfig(image_size=32, audio_dtype="float16")
    folder = write_random_folder(tmp_path / "f16", (10,), config)
    dataset = ShardDataset([folder])
    stored = h5_rows(folder / "shard-00000.h5")["audio"]
    assert dataset[4]["audio"].dtype == torch.float32
    assert torch.equal(dataset[4]["audio"], torch.from_numpy(stored[4].astype(np.float32)))
    assert dataset.read_batch([4], audio_float32=False)["audio"].dtype == torch.float16


def test_stale_index_and_missing_frames_are_errors(tmp_path):
    folder = write_random_folder(tmp_path / "t", (10,), SMALL_FEATURES)
    write_random_shard(folder / "shard-00000.h5", 12, SMALL_FEATURES)
    with pytest.raises(ValueError, match="rebuild the index"):
        ShardDataset([folder])
    audio_only = write_random_folder(tmp_path / "audio", (10,), SMALL_FEATURES, with_video=False)
    with pytest.raises(ValueError, match="hold no video frames"):
        ShardDataset([audio_only])
    assert "video" not in ShardDataset([audio_only], with_video=False)[0]
