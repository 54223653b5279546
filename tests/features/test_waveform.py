"""The waveform definition of stage one (`features.audio: waveform`): stored waveforms against
librosa's resampling of the same file, offline-augmented waveform rows, the config's checks, and
the demo data set extracted through the CLI."""

import dataclasses

import librosa
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from avsc_pipeline.corpus.tau import load_tau
from avsc_pipeline.features.extract import extract_split
from avsc_pipeline.features.offline_augment_shards import augment_split
from avsc_pipeline.features.verify import verify_folder
from avsc_pipeline.features.waveform import RES_TYPE
from avsc_pipeline.sections.features import FeatureConfig, OfflineAugmentConfig, augment_config_of, feature_config_of
from avsc_pipeline.storage.columns import read_columns
from avsc_pipeline.storage.shards import SCHEMA_VERSION, list_shards, read_attrs
from avsc_pipeline.testing import make_tau_dataset
from cli.features import main

WAVEFORM = FeatureConfig(audio="waveform", image_size=32)
CLASSES = ["bus", "park", "tram", "metro"]


def all_rows(folder):
    rows = [read_columns(p) for p in list_shards(folder)]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def librosa_segments(path, segment, rate=32000):
    """The file's 1-second segments (at its own 48 kHz), each resampled by librosa to `rate`:
    `(K, 2, rate)` float32."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    k = data.shape[0] // segment
    segments = data[: k * segment].T.reshape(2, k, segment).transpose(1, 0, 2)
    return librosa.resample(segments, orig_sr=sr, target_sr=rate, res_type=RES_TYPE, axis=-1)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """An 8-clip, 2-second data set and its waveform train shards."""
    base = tmp_path_factory.mktemp("waveform")
    root = make_tau_dataset(base / "ds", n_clips=8, seconds=2.0, classes=CLASSES)
    out = base / "features"
    extract_split(load_tau(root, "train"), out / "train", WAVEFORM, sorted(CLASSES), shard_size=4, progress=False)
    return root, out


def test_the_waveform_definition_and_its_checks():
    assert WAVEFORM.audio_shape == (2, 32000) and WAVEFORM.waveform_samples == 32000
    assert FeatureConfig().audio == "logmel" and FeatureConfig().audio_shape == (6, 128, 39)
    assert FeatureConfig(audio="waveform", segment_samples=24000).audio_shape == (2, 16000)
    with pytest.raises(ValueError, match=r"expected audio in \('logmel', 'waveform'\), got 'wave'"):
        FeatureConfig(audio="wave")
    with pytest.raises(ValueError, match="expected waveform_rate >= 28000 .* got 16000"):
        FeatureConfig(audio="waveform", waveform_rate=16000)
    with pytest.raises(ValueError, match="whole number of waveform samples"):
        FeatureConfig(audio="waveform", segment_samples=48001)


def test_stored_waveforms_equal_librosas_resampling_of_the_file(extracted):
    root, out = extracted
    folder = out / "train"
    rows = all_rows(folder)
    assert rows["audio"].shape[1:] == (2, 32000) and rows["audio"].dtype == np.float32
    start = 0
    for clip in load_tau(root, "train"):
        expected = librosa_segments(clip.audio, WAVEFORM.segment_samples)
        got = rows["audio"][start : start + len(expected)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
        assert list(rows["segment"][start : start + len(expected)]) == list(range(len(expected)))
        start += len(expected)
    assert start == len(rows["audio"]) and rows["video"].shape[1:] == (2, 3, 32, 32)
    attrs = read_attrs(list_shards(folder)[0])
    assert attrs["schema_version"] == SCHEMA_VERSION == 3
    assert feature_config_of(attrs) == WAVEFORM and attrs["feature_config"]["waveform_rate"] == 32000
    assert verify_folder(folder) == []


def test_offline_augmentation_writes_waveform_rows_the_same_way(extracted, tmp_path):
    root, out = extracted
    aug = tmp_path / "train-aug"
    config = OfflineAugmentConfig(ops=("mix",), copies=1)
    augment_split(load_tau(root, "train"), out / "train", aug, config, shard_size=4, progress=False)
    rows = all_rows(aug)
    assert rows["audio"].shape[1:] == (2, 32000) and set(rows["variant"]) == {"mix"}
    audio_of = {c.clip_id: c.audio for c in load_tau(root, "train")}
    for i in range(len(rows["audio"])):
        # the mix `clip_gain * a + gain * b` of the two files, resampled by librosa one second at a time
        a, _ = sf.read(audio_of[rows["clip_id"][i]], dtype="float32", always_2d=True)
        b, _ = sf.read(audio_of[rows["partner_clip"][i]], dtype="float32", always_2d=True)
        mixed = np.float32(rows["clip_gain"][i]) * a.T + np.float32(rows["gain"][i]) * b.T[:, : a.shape[0]]
        k, n = int(rows["segment"][i]), WAVEFORM.segment_samples
        expected = librosa.resample(mixed[:, k * n : (k + 1) * n], orig_sr=48000, target_sr=32000,
                                    res_type=RES_TYPE, axis=-1)
        np.testing.assert_allclose(rows["audio"][i], expected, rtol=0, atol=1e-6)
    assert verify_folder(aug) == []
    attrs = read_attrs(list_shards(aug)[0])
    assert augment_config_of(attrs) == config and feature_config_of(attrs) == WAVEFORM


def test_a_rerun_into_a_log_mel_folder_with_the_waveform_definition_is_refused(extracted, tmp_path):
    root, _ = extracted
    clips = load_tau(root, "train")
    logmel = dataclasses.replace(WAVEFORM, audio="logmel")
    extract_split(clips[:1], tmp_path / "train", logmel, sorted(CLASSES), progress=False)
    with pytest.raises(ValueError, match="audio: 'logmel' != 'waveform'"):
        extract_split(clips[:1], tmp_path / "train", WAVEFORM, sorted(CLASSES), progress=False)


@pytest.mark.slow
def test_demo_data_extracted_with_the_waveform_definition(tmp_path):
    from avsc_pipeline.recipe import configs_dir

    runner = CliRunner()
    result = runner.invoke(main, ["demo-data", str(tmp_path / "demo"), "--clips-per-class", "1", "--duration", "2"])
    assert result.exit_code == 0, result.output
    config = configs_dir() / "features" / "waveform.yaml"
    result = runner.invoke(main, ["extract", str(tmp_path / "demo"), str(tmp_path / "features"), "--split", "train",
                                  "--config", str(config)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["verify", str(tmp_path / "features")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "features" / "train"
    rows = all_rows(folder)
    assert rows["audio"].shape[1:] == (2, 32000) and rows["video"].shape[1:] == (2, 3, 224, 224)
    assert feature_config_of(read_attrs(list_shards(folder)[0])).audio == "waveform"
    first = load_tau(tmp_path / "demo", "train")[0]
    expected = librosa_segments(first.audio, 48000)
    np.testing.assert_allclose(rows["audio"][: len(expected)], expected, rtol=0, atol=1e-7)
