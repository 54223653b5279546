"""Shards and indexes of schema version 1 are migrated on purpose where they are read.

Version 1 wrote a config section without the keys it gained with the authors' definitions when
all of them held their earlier values. The expected values below are the earlier definitions as
the authors' configs state them (`configs/features/librosa-db.yaml`,
`configs/offline_augment/resample-snr.yaml`), written out here rather than taken from storage.
"""

import dataclasses
import json
import logging

import numpy as np
import pytest

from avsc_pipeline.config import to_dict
from avsc_pipeline.features.verify import verify_folder
from avsc_pipeline.sections.features import FeatureConfig, OfflineAugmentConfig, augment_config_of, feature_config_of
from avsc_pipeline.storage.index import INDEX_NAME, build_index, folder_column, load_index
from avsc_pipeline.storage.shards import (
    SCHEMA_VERSION, ShardWriter, augment_columns, read_attrs, shard_attrs, shard_name, stage_one_columns,
)
from avsc_pipeline.testing import SMALL_FEATURES, write_random_folder

EARLIER_FEATURES = {"pad_mode": "constant", "log": "db", "log_offset": 1e-8, "scaling": "none", "delta": "librosa"}
EARLIER_AUGMENT = {"speed_method": "resample", "noise": "snr", "noise_std": 0.01, "mix": "one_gain"}
CLASSES = ["a", "b"]


def _without(config, keys):
    return {k: v for k, v in to_dict(config).items() if k not in keys}


def _write(path, version, feature_config, columns, **extra):
    """A one-row shard whose attributes say `version` and hold `feature_config` as given."""
    attrs = shard_attrs(CLASSES, SMALL_FEATURES, "plan", **extra)
    attrs.update(schema_version=version, feature_config=json.dumps(feature_config, sort_keys=True))
    rows = dict(audio=np.zeros((1,) + SMALL_FEATURES.audio_shape), label=[0], clip_id=["c"], segment=[0],
                identifier=["i"], variant=["orig"], audio_file=["x/c.flac"], video_ref_clip=["c"],
                video_ref_segment=[0], copy=[0], semitones=[np.nan], speed=[np.nan], snr_db=[np.nan], gain=[np.nan],
                partner_clip=[""])
    with ShardWriter(path, columns, attrs) as writer:
        writer.add(**{name: rows[name] for name in columns})
    return path


def test_a_version_1_shard_reads_with_the_earlier_feature_definition(tmp_path, caplog):
    earlier = dataclasses.replace(SMALL_FEATURES, **EARLIER_FEATURES)
    path = _write(tmp_path / shard_name(0), 1, _without(earlier, EARLIER_FEATURES),
                  stage_one_columns(SMALL_FEATURES, with_video=False, schema_version=1))
    with caplog.at_level(logging.INFO, logger="avsc_pipeline.storage.versions"):
        attrs = read_attrs(path)
    assert {k: attrs["feature_config"][k] for k in EARLIER_FEATURES} == EARLIER_FEATURES
    assert feature_config_of(attrs) == earlier
    assert attrs["schema_version"] == 1 and "audio_file" not in attrs["datasets"]
    assert f"{path}: written with schema version 1" in caplog.text


def test_a_version_2_shard_reads_as_log_mel_features(tmp_path, caplog):
    """Version 2 had no `audio` key: every shard held log-mel features. The keys version 1 left
    out are not filled in (no writer of version 2 leaves keys out): they take today's defaults."""
    lacking = _without(SMALL_FEATURES, tuple(EARLIER_FEATURES) + ("audio", "waveform_rate"))
    path = _write(tmp_path / shard_name(0), 2, lacking, stage_one_columns(SMALL_FEATURES, with_video=False))
    with caplog.at_level(logging.INFO, logger="avsc_pipeline.storage.versions"):
        attrs = read_attrs(path)
    assert attrs["feature_config"] == {**lacking, "audio": "logmel", "waveform_rate": 32000}
    assert f"{path}: written with schema version 2" in caplog.text and attrs["schema_version"] == 2
    today = {k: getattr(FeatureConfig(), k) for k in EARLIER_FEATURES}
    assert feature_config_of(attrs) == dataclasses.replace(SMALL_FEATURES, **today)  # the missing keys: today's


def test_a_version_3_shard_is_read_as_written(tmp_path, caplog):
    waveform = dataclasses.replace(SMALL_FEATURES, audio="waveform")
    path = _write(tmp_path / shard_name(0), 3, to_dict(waveform), stage_one_columns(SMALL_FEATURES, with_video=False))
    with caplog.at_level(logging.INFO, logger="avsc_pipeline.storage.versions"):
        attrs = read_attrs(path)
    assert attrs["feature_config"] == to_dict(waveform) and "schema version" not in caplog.text


def test_a_version_1_augmented_shard_reads_with_the_earlier_augment_definition(tmp_path):
    earlier = OfflineAugmentConfig(**EARLIER_AUGMENT)
    path = _write(tmp_path / shard_name(0), 1, to_dict(SMALL_FEATURES),
                  augment_columns(SMALL_FEATURES, schema_version=1), video_source="../train",
                  augment_config=_without(earlier, EARLIER_AUGMENT))
    attrs = read_attrs(path)
    assert augment_config_of(attrs) == earlier
    assert attrs["feature_config"] == to_dict(SMALL_FEATURES)  # keys present stay as written


def test_a_version_1_index_reads_with_the_earlier_definitions(tmp_path):
    folder = write_random_folder(tmp_path / "train", (4,), SMALL_FEATURES, classes=CLASSES)
    index = json.loads((folder / INDEX_NAME).read_text())
    index.update(schema_version=1, feature_config=_without(SMALL_FEATURES, EARLIER_FEATURES),
                 augment_config=_without(OfflineAugmentConfig(), EARLIER_AUGMENT))
    (folder / INDEX_NAME).write_text(json.dumps(index))
    loaded = load_index(folder)
    assert {k: loaded["feature_config"][k] for k in EARLIER_FEATURES} == EARLIER_FEATURES
    assert {k: loaded["augment_config"][k] for k in EARLIER_AUGMENT} == EARLIER_AUGMENT
    assert loaded["schema_version"] == 1


def test_a_version_3_index_is_read_as_written(tmp_path):
    folder = write_random_folder(tmp_path / "train", (4,), SMALL_FEATURES, classes=CLASSES)
    written = json.loads((folder / INDEX_NAME).read_text())
    assert written["schema_version"] == SCHEMA_VERSION == 3
    assert load_index(folder) == written


def test_a_version_2_index_reads_as_log_mel_features(tmp_path):
    folder = write_random_folder(tmp_path / "train", (4,), SMALL_FEATURES, classes=CLASSES)
    index = json.loads((folder / INDEX_NAME).read_text())
    index.update(schema_version=2, feature_config=_without(SMALL_FEATURES, ("audio", "waveform_rate")))
    (folder / INDEX_NAME).write_text(json.dumps(index))
    assert load_index(folder)["feature_config"] == to_dict(SMALL_FEATURES)


def test_a_newer_schema_version_is_refused_naming_the_file(tmp_path):
    path = _write(tmp_path / shard_name(0), 4, to_dict(SMALL_FEATURES), stage_one_columns(SMALL_FEATURES, False))
    with pytest.raises(ValueError, match=r"shard-00000\.h5: expected schema_version 1\.\.3 .* got 4"):
        read_attrs(path)


def test_a_version_1_folder_verifies_and_has_no_file_names(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    _write(folder / shard_name(0), 1, to_dict(SMALL_FEATURES),
           stage_one_columns(SMALL_FEATURES, with_video=False, schema_version=1))
    build_index(folder)
    assert verify_folder(folder) == []
    assert folder_column(folder, "audio_file") is None
    assert folder_column(folder, "clip_id").tolist() == ["c"]


def test_file_names_are_read_in_index_order(tmp_path, h5_rows):
    folder = write_random_folder(tmp_path / "train", (20, 30), SMALL_FEATURES, classes=CLASSES)
    expected = np.concatenate([h5_rows(folder / shard_name(k))["audio_file"] for k in (0, 1)])
    assert folder_column(folder, "audio_file").tolist() == expected.tolist()
    assert verify_folder(folder) == []
