"""Stage two input: the shard dataset, samplers, audio statistics and the loader."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict

import h5py
import numpy as np
import pytest
import torch

from avsc_pipeline.config import FeatureConfig
from avsc_pipeline.errors import ConfigMismatchError
from avsc_pipeline.manifest import TAU_CLASSES
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.storage.shards import augment_columns
from avsc_pipeline.storage.shards import ShardWriter, shard_attrs
from avsc_pipeline.testing import write_random_shard
from avsc_pipeline.dataio.config import LoaderConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import make_loader
from avsc_pipeline.dataio.preparation import FRAME_NORMS, BatchPreparer
from avsc_pipeline.dataio.samplers import EpochSampler, location_split, split_items
from avsc_pipeline.dataio.stats import (
    compute_audio_stats, ensure_audio_stats, load_audio_stats, save_audio_stats,
)

SMALL = FeatureConfig(image_size=32)


def h5_rows(path: Path) -> Dict[str, np.ndarray]:
    """Every column of a shard, straight from h5py (the independent reference)."""
    with h5py.File(path, "r") as handle:
        return {k: (handle[k].asstr()[()] if h5py.check_string_dtype(handle[k].dtype) else handle[k][()])
                for k in handle}


def make_folder(folder: Path, sizes=(20, 30), config: FeatureConfig = FeatureConfig(), **kwargs) -> Path:
    for number, rows in enumerate(sizes):
        write_random_shard(folder / f"shard-{number:05d}.h5", rows, config, seed=number, **kwargs)
    build_index(folder)
    return folder


def make_aug_folder(folder: Path, source: Path, config: FeatureConfig, rows: int = 12,
                    bad_reference: bool = False, seed: int = 7) -> Path:
    """A `train-aug` folder in the augmented schema whose rows refer to `source`'s frames."""
    original = h5_rows(source / "shard-00000.h5")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(original["clip_id"]), rows, replace=False)
    clips = original["clip_id"][pick].tolist()
    if bad_reference:
        clips[3] = "no-such-clip"
    nan = np.full(rows, np.nan, dtype=np.float32)
    columns = dict(
        audio=rng.standard_normal((rows,) + config.audio_shape).astype(np.float32),
        label=original["label"][pick], clip_id=original["clip_id"][pick], segment=np.arange(rows) % 10,
        identifier=original["identifier"][pick], variant=["pitch", "speed", "noise", "mix"] * (rows // 4),
        video_ref_clip=clips, video_ref_segment=original["segment"][pick],
        copy=np.zeros(rows, np.int16), semitones=nan, speed=nan, snr_db=nan, gain=nan, partner_clip=[""] * rows,
    )
    folder.mkdir(parents=True)
    attrs = shard_attrs(TAU_CLASSES, config, "aug", video_source="../train")
    with ShardWriter(folder / "shard-00000.h5", augment_columns(config), attrs) as writer:
        writer.add(**columns)
    build_index(folder)
    return folder


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("shards") / "train")


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory) -> Path:
    """`train` (2 shards, 32x32 frames) and `train-aug` referring to it."""
    root = tmp_path_factory.mktemp("pair")
    make_folder(root / "train", (24, 16), SMALL, identifiers=3)
    make_aug_folder(root / "train-aug", root / "train", SMALL)
    return root


# -- dataset ----------------------------------------------------------------------------------

def test_items_equal_a_direct_h5py_read(train_folder):
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


def test_augmented_rows_resolve_their_video(small_pair):
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
    make_folder(tmp_path / "train", (20,), SMALL)
    make_aug_folder(tmp_path / "train-aug", tmp_path / "train", SMALL, bad_reference=True)
    with pytest.raises(ValueError, match="no-such-clip"):
        ShardDataset([tmp_path / "train", tmp_path / "train-aug"])
    assert len(ShardDataset([tmp_path / "train-aug"], with_video=False)) == 12


def test_refuses_a_different_feature_config_naming_the_field(tmp_path):
    make_folder(tmp_path / "a", (10,), SMALL)
    make_folder(tmp_path / "b", (10,), FeatureConfig(image_size=32, n_mels=64))
    with pytest.raises(ConfigMismatchError, match=r"n_mels: 128 != 64"):
        ShardDataset([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigMismatchError, match="image_size"):
        ShardDataset([tmp_path / "a"], feature_config=FeatureConfig())


def test_refuses_a_different_class_list(tmp_path):
    make_folder(tmp_path / "a", (10,), SMALL)
    make_folder(tmp_path / "b", (10,), SMALL, classes=list(TAU_CLASSES)[::-1])
    with pytest.raises(ConfigMismatchError, match="class list"):
        ShardDataset([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigMismatchError, match="class list"):
        ShardDataset([tmp_path / "a"], classes=["a", "b"])


def test_float16_audio_is_returned_as_float32(tmp_path):
    config = FeatureConfig(image_size=32, audio_dtype="float16")
    folder = make_folder(tmp_path / "f16", (10,), config)
    dataset = ShardDataset([folder])
    stored = h5_rows(folder / "shard-00000.h5")["audio"]
    assert dataset[4]["audio"].dtype == torch.float32
    assert torch.equal(dataset[4]["audio"], torch.from_numpy(stored[4].astype(np.float32)))
    assert dataset.read_batch([4], audio_float32=False)["audio"].dtype == torch.float16


def test_stale_index_and_missing_frames_are_errors(tmp_path):
    folder = make_folder(tmp_path / "t", (10,), SMALL)
    write_random_shard(folder / "shard-00000.h5", 12, SMALL)
    with pytest.raises(ValueError, match="rebuild the index"):
        ShardDataset([folder])
    audio_only = make_folder(tmp_path / "audio", (10,), SMALL, with_video=False)
    with pytest.raises(ValueError, match="with_video=False"):
        ShardDataset([audio_only])
    assert "video" not in ShardDataset([audio_only], with_video=False)[0]


# -- samplers ---------------------------------------------------------------------------------

def random_locations(n: int = 600, classes: int = 5, per_class: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    identifiers = np.array([f"c{label}-loc{rng.integers(per_class)}" for label in labels])
    return identifiers, labels


def test_location_split_shares_no_identifier_and_holds_out_a_tenth():
    identifiers, labels = random_locations()
    split = split_items(identifiers, labels, np.zeros(len(labels), bool), val_fraction=0.1, seed=3)
    assert not set(identifiers[split.train]) & set(identifiers[split.validation])
    assert len(split.train) + len(split.validation) == len(labels)
    for label in range(5):
        held = {i for i in identifiers[split.validation][labels[split.validation] == label]}
        assert len(held) == 2  # 10% of 20 locations
    again = location_split(identifiers, labels, 0.1, seed=3)
    assert again.tolist() == split.held_out.tolist()
    assert location_split(identifiers, labels, 0.1, seed=4).tolist() != again.tolist()


def test_split_keeps_augmented_rows_of_held_out_locations_out():
    identifiers, labels = random_locations()
    augmented = np.arange(len(labels)) % 3 == 0
    split = split_items(identifiers, labels, augmented, 0.1, seed=0)
    assert not augmented[split.train].any() and not augmented[split.validation].any()
    assert augmented[split.augmented].all()
    assert not np.isin(identifiers[split.augmented], split.held_out).any()
    assert np.isin(identifiers[augmented & ~np.isin(identifiers, split.held_out)],
                   identifiers[split.augmented]).all()


def test_epoch_sampler_shuffles_and_draws_a_new_augmented_subset_each_epoch():
    sampler = EpochSampler(np.arange(100), np.arange(100, 200), aug_fraction=0.3, seed=1)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        items = np.array(list(sampler))
        assert len(items) == len(sampler) == 130 and len(set(items)) == 130
        assert set(range(100)) <= set(items.tolist()) and (items >= 100).sum() == 30
        epochs.append(items)
    assert set(epochs[0][epochs[0] >= 100]) != set(epochs[1][epochs[1] >= 100])
    assert epochs[0].tolist() != sorted(epochs[0].tolist())
    sampler.set_epoch(0)
    assert list(sampler) == epochs[0].tolist()


def test_epoch_sampler_shards_like_distributed_sampler():
    items = np.arange(10, 33)  # 23 items over 4 processes: padded to 24
    ours = [list(EpochSampler(items, shuffle=False, num_replicas=4, rank=r)) for r in range(4)]
    reference = [list(torch.utils.data.DistributedSampler(range(23), num_replicas=4, rank=r, shuffle=False))
                 for r in range(4)]
    assert ours == [[int(items[i]) for i in ref] for ref in reference]
    shuffled = [EpochSampler(items, seed=5, num_replicas=4, rank=r, drop_last=True) for r in range(4)]
    for sampler in shuffled:
        sampler.set_epoch(2)
    parts = [list(s) for s in shuffled]
    assert all(len(p) == 5 for p in parts)
    assert len(set(sum(parts, []))) == 20
    with pytest.raises(ValueError, match="expected 0 <= rank < 4"):
        EpochSampler(items, num_replicas=4, rank=4)


# -- statistics -------------------------------------------------------------------------------

def test_audio_stats_equal_numpy_and_detect_staleness(tmp_path):
    folder = make_folder(tmp_path / "train", (20, 30), SMALL)
    audio = np.concatenate([h5_rows(folder / f"shard-0000{i}.h5")["audio"] for i in range(2)]).astype(np.float64)
    stats = compute_audio_stats(folder, block_rows=7)
    np.testing.assert_allclose(stats.mean, audio.mean(axis=(0, 2, 3)), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.std, audio.std(axis=(0, 2, 3)), rtol=1e-9)
    assert stats.rows == 50
    stats = compute_audio_stats(folder)
    assert ensure_audio_stats(folder) == stats and (folder / "audio_stats.json").is_file()
    assert load_audio_stats(folder) == stats
    write_random_shard(folder / "shard-00002.h5", 10, SMALL, seed=9)
    build_index(folder)
    with pytest.raises(ValueError, match="stale"):
        load_audio_stats(folder)
    assert ensure_audio_stats(folder).rows == 60
    save_audio_stats(stats, folder, "other.json")
    with pytest.raises(FileNotFoundError):
        load_audio_stats(folder, "missing.json")


# -- loader and device preparation -------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_loader_reads_every_item_once_per_epoch(small_pair, workers):
    dataset = ShardDataset([small_pair / "train", small_pair / "train-aug"])
    sampler = EpochSampler(np.arange(len(dataset)), seed=0)
    config = LoaderConfig(batch_size=4, num_workers=workers, prefetch_factor=2, drop_last=False)
    loader = make_loader(dataset, sampler, config, "cpu")
    kept, view = [], None
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = []
        for batch in loader:
            assert batch["video"].dtype == torch.uint8 and batch["audio"].dtype == torch.float32
            assert batch["label"].dtype == torch.int64 and "slot" not in batch
            reference = dataset.read_batch(batch["index"].tolist())
            assert torch.equal(batch["video"], reference["video"]) and torch.equal(batch["audio"], reference["audio"])
            if epoch == 0:  # every batch kept
                kept.append((batch["index"].clone(), batch["video"], batch["audio"]))
            if epoch == 1 and view is None:  # only a view of one frame kept
                view = (batch["index"][0].item(), batch["video"][0, 1])
            seen.extend(batch["index"].tolist())
        assert sorted(seen) == list(range(len(dataset)))
    for index, video, audio in kept:  # batches kept past later ones are intact
        reference = dataset.read_batch(index.tolist())
        assert torch.equal(video, reference["video"]) and torch.equal(audio, reference["audio"])
    assert torch.equal(view[1], dataset[view[0]]["video"][1])
    if workers:
        del kept, batch, video, audio, view
        loader.release_unreferenced()
        assert int(loader.dataset.pool.flags.sum()) == 0


def test_batch_preparer_normalizes_like_torchvision_in_eval(small_pair):
    from torchvision.transforms.v2 import functional as F

    from avsc_pipeline.dataio.config import BatchAugmentConfig

    dataset = ShardDataset([small_pair / "train"])
    stats = compute_audio_stats(small_pair / "train")
    preparer = BatchPreparer(len(dataset.classes), stats, "imagenet", BatchAugmentConfig(), seed=0).eval()
    batch = dataset.read_batch([0, 5, 17])
    out = preparer(batch)
    mean, std = FRAME_NORMS["imagenet"]
    expected = F.normalize(F.to_dtype(batch["video"], torch.float32, scale=True), list(mean), list(std))
    torch.testing.assert_close(out["video"], expected, rtol=1e-5, atol=1e-5)
    audio_mean = torch.tensor(stats.mean).view(1, 6, 1, 1)
    audio_std = torch.tensor(stats.std).view(1, 6, 1, 1)
    torch.testing.assert_close(out["audio"], (batch["audio"] - audio_mean) / audio_std, rtol=1e-5, atol=1e-5)
    assert torch.equal(out["target"], torch.nn.functional.one_hot(batch["label"], 10).float())
    train = preparer.train()(batch)
    assert not torch.equal(train["audio"], out["audio"])
    assert torch.allclose(train["target"].sum(dim=1), torch.ones(3))


def test_build_training_input_end_to_end(small_pair):
    from avsc_pipeline.dataio.loader import build_training_input

    config = LoaderConfig(batch_size=4, num_workers=0, val_fraction=0.34, aug_fraction=0.5)
    setup = build_training_input([small_pair / "train", small_pair / "train-aug"], config, "cpu", seed=1)
    ids = setup.dataset.identifiers
    assert len(setup.split.validation) and not set(ids[setup.split.train]) & set(ids[setup.split.validation])
    assert (small_pair / "train" / "audio_stats.json").is_file()
    setup.train_sampler.set_epoch(0)
    batch = setup.preparer.train()(next(iter(setup.train)))
    assert batch["audio"].shape == (4, 6, 128, 39) and batch["video"].dtype == torch.float32
    assert batch["target"].shape == (4, 10)
    seen = [i for b in setup.validation for i in b["index"].tolist()]
    assert sorted(seen) == sorted(setup.split.validation.tolist())
