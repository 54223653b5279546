"""The index of a shard folder, row lookups by (clip, segment), and verification."""

import numpy as np

from avsc_pipeline.storage.index import load_index, row_labels, row_locations
from avsc_pipeline.features.verify import verify_folder
from avsc_pipeline.storage.shards import list_shards
from avsc_pipeline.testing import SMALL_FEATURES, write_augmented_folder, write_random_folder


def test_index_counts_rows_and_classes(tmp_path, h5_rows):
    folder = write_random_folder(tmp_path / "train", (20, 30), SMALL_FEATURES)
    index = load_index(folder)
    assert [(s["file"], s["rows"]) for s in index["shards"]] == [("shard-00000.h5", 20), ("shard-00001.h5", 30)]
    labels = np.concatenate([h5_rows(p)["label"] for p in list_shards(folder)])
    assert index["rows"] == 50 and sum(index["class_counts"].values()) == 50
    assert index["class_counts"][index["classes"][0]] == int((labels == 0).sum())
    assert verify_folder(folder) == []


def test_row_lookups_name_each_rows_shard_row_and_label(tmp_path, h5_rows):
    folder = write_random_folder(tmp_path / "train", (20, 30), SMALL_FEATURES)
    where, labels = row_locations(folder), row_labels(folder)
    assert len(where) == len(labels) == 50
    for path in list_shards(folder):
        rows = h5_rows(path)
        for row, (clip, segment, label) in enumerate(zip(rows["clip_id"], rows["segment"], rows["label"])):
            assert where[(clip, int(segment))] == (path.name, row)
            assert labels[(clip, int(segment))] == int(label)


def test_verify_checks_every_video_reference(tmp_path):
    write_random_folder(tmp_path / "train", (20,), SMALL_FEATURES)
    good = write_augmented_folder(tmp_path / "train-aug", tmp_path / "train", SMALL_FEATURES)
    assert verify_folder(good) == []
    bad = write_augmented_folder(tmp_path / "bad-aug", tmp_path / "train", SMALL_FEATURES, bad_reference=True)
    problems = verify_folder(bad)
    assert len(problems) == 1 and "1 video references do not resolve" in problems[0] and "no-such-clip" in problems[0]
