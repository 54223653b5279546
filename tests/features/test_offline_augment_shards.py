"""`avsc-features augment` end to end: contents against librosa, references, determinism, resume."""

import json
import shutil
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from avsc_pipeline.sections.features import FeatureConfig, OfflineAugmentConfig
from avsc_pipeline.errors import BadClipError, ConfigMismatchError
from avsc_pipeline.features.audio import load_audio, reference_features, split_segments
from avsc_pipeline.features.offline_augment import change_speed, variant_rngs
from avsc_pipeline.features.offline_augment_shards import augment_split
from avsc_pipeline.features.extract import extract_split
from avsc_pipeline.features.video import read_frame_pairs
from avsc_pipeline.corpus.tau import load_tau
from avsc_pipeline.storage.index import build_index, load_index, row_locations
from avsc_pipeline.features.verify import verify_folder
from avsc_pipeline.storage.columns import read_columns
from avsc_pipeline.storage.shards import list_shards, read_attrs
from avsc_pipeline.testing import make_tau_dataset
from cli.features import main

CFG = FeatureConfig()
CLASSES = ["bus", "park", "tram", "metro"]  # the train list (even clips) holds bus and tram


def stage_one(root, out, split="train"):
    clips = load_tau(root, split)
    extract_split(clips, out / split, CFG, sorted(CLASSES), shard_size=8, progress=False)
    return clips


def augment(root, out, config=OfflineAugmentConfig(), split="train", **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("shard_size", 10)
    return augment_split(load_tau(root, split), out / split, out / f"{split}-aug", config, **kwargs)


def all_rows(folder):
    rows = [read_columns(p) for p in list_shards(folder)]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def assert_same_folders(a, b):
    assert [p.name for p in list_shards(a)] == [p.name for p in list_shards(b)]
    for pa, pb in zip(list_shards(a), list_shards(b)):
        ra, rb = read_columns(pa), read_columns(pb)
        assert ra.keys() == rb.keys()
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{pa.name}:{key}")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A 12-clip, 2-second data set (6 train clips: 3 bus, 3 tram) and its stage-one train shards."""
    base = tmp_path_factory.mktemp("aug")
    root = make_tau_dataset(base / "ds", n_clips=12, seconds=2.0, classes=CLASSES)
    stage_one(root, base / "features")
    return root, base / "features"


@pytest.fixture(scope="module")
def augmented(extracted):
    """The authors' operations (the defaults), two copies each."""
    root, features = extracted
    config = OfflineAugmentConfig(copies=2, seed=3)
    summary = augment(root, features, config)
    return root, features, config, summary


# The earlier variants (configs/offline_augment/resample-snr.yaml), slow enough that 2 s become
# 3 segments: segment 2 then uses the video of segment 1.
EARLIER = OfflineAugmentConfig(copies=2, seed=3, pitch_semitones=(-2.0, 2.0), speed_method="resample",
                               speed_factor=(0.6, 0.65), noise="snr", mix="one_gain", mix_gain=(0.3, 0.7))


def librosa_tempo(x, rate):
    """The authors' speed change with librosa (float64: librosa's float32 phase accumulator
    drifts by 0.5%): time_stretch, a shorter result repeated end to end, cut to the clip's length."""
    import librosa

    y = librosa.effects.time_stretch(x.astype(np.float64), rate=float(rate))
    return np.tile(y, (1, -(-x.shape[1] // y.shape[1])))[:, : x.shape[1]].astype(np.float32)


def test_rows_match_librosa_features_of_the_recorded_operation(augmented):
    root, features, config, summary = augmented
    clips = {c.clip_id: c for c in load_tau(root, "train")}
    rows = all_rows(features / "train-aug")
    assert summary.skipped == [] and summary.rows == len(rows["audio"])
    assert set(rows["variant"]) == {"pitch", "speed", "noise", "mix"} and set(rows["copy"]) == {0, 1}
    assert len(rows["audio"]) == 6 * 4 * 2 * 2  # 4 ops x 2 copies x 2 segments: a stretch keeps the length
    for i in np.flatnonzero((rows["variant"] == "mix") & (rows["segment"] == 0)):
        a, b = clips[rows["clip_id"][i]], clips[rows["partner_clip"][i]]
        assert a.label == b.label and a.clip_id != b.clip_id and rows["identifier"][i] == a.identifier
        assert rows["label"][i] == sorted(CLASSES).index(a.label)
        x, y = load_audio(a.audio, CFG), load_audio(b.audio, CFG)
        mixed = np.float32(rows["clip_gain"][i]) * x + np.float32(rows["gain"][i]) * y  # f1 a + f2 b
        assert np.abs(rows["audio"][i : i + 2] - reference_features(split_segments(mixed, CFG), CFG)).max() < 1e-4
    for i in np.flatnonzero((rows["variant"] == "speed") & (rows["segment"] == 0))[::3]:
        x = load_audio(clips[rows["clip_id"][i]].audio, CFG)
        expected = reference_features(split_segments(librosa_tempo(x, rows["stretch"][i]), CFG), CFG)
        # the phase vocoders agree within 5e-5 (relative RMS), up to 1e-3 in weak bands after the
        # log; a rate 1% off moves the features by 0.2
        assert np.abs(rows["audio"][i : i + 2] - expected).max() < 3e-3
    for i in np.flatnonzero((rows["variant"] == "noise") & (rows["segment"] == 0))[::3]:
        x = load_audio(clips[rows["clip_id"][i]].audio, CFG)
        _, rng = variant_rngs(config.seed, rows["clip_id"][i], "noise", int(rows["copy"][i]))
        noisy = np.where(x != 0, x + np.float32(0.01) * rng.standard_normal(x.shape, dtype=np.float32), x)
        assert np.abs(rows["audio"][i : i + 2] - reference_features(split_segments(noisy, CFG), CFG)).max() < 1e-4
    for name, variant in [("semitones", "pitch"), ("stretch", "speed"), ("gain", "mix"), ("clip_gain", "mix")]:
        assert np.all(np.isfinite(rows[name][rows["variant"] == variant]))
        assert np.all(np.isnan(rows[name][rows["variant"] != variant]))
    assert np.all(np.isnan(rows["speed"])) and np.all(np.isnan(rows["snr_db"]))  # no resampling, no SNR
    stretch = rows["stretch"][rows["variant"] == "speed"]
    assert np.all((stretch >= 0.5) & (stretch <= 2.0)) and len(set(stretch)) == 12
    gains = np.concatenate([rows["gain"], rows["clip_gain"]])
    assert np.all(gains[np.isfinite(gains)] >= 0.5) and np.all(gains[np.isfinite(gains)] <= 1.0)
    attrs = read_attrs(list_shards(features / "train-aug")[0])
    assert attrs["video_source"] == "../train" and json.loads(attrs["augment_config"])["seed"] == 3
    assert attrs["feature_config"] == read_attrs(list_shards(features / "train")[0])["feature_config"]
    assert "video" not in attrs["datasets"]
    assert verify_folder(features / "train-aug") == []


@pytest.mark.slow
def test_earlier_variants_record_their_parameters_in_the_earlier_columns(extracted, tmp_path):
    root, features = extracted
    work = tmp_path / "f"
    shutil.copytree(features / "train", work / "train")
    augment(root, work, EARLIER)
    clips = {c.clip_id: c for c in load_tau(root, "train")}
    rows = all_rows(work / "train-aug")
    assert "stretch" not in rows and "clip_gain" not in rows  # exactly the earlier schema
    assert len(rows["audio"]) == 6 * (3 * 2 * 2 + 2 * 3)  # 3 ops x 2 copies x 2 segments + speed: 3 segments
    for i in np.flatnonzero((rows["variant"] == "mix") & (rows["segment"] == 0))[::3]:
        x, y = load_audio(clips[rows["clip_id"][i]].audio, CFG), load_audio(clips[rows["partner_clip"][i]].audio, CFG)
        mixed = x + np.float32(rows["gain"][i]) * y  # a + g * b for the recorded gain, no normalization
        assert np.abs(rows["audio"][i : i + 2] - reference_features(split_segments(mixed, CFG), CFG)).max() < 1e-4
    for i in np.flatnonzero((rows["variant"] == "speed") & (rows["segment"] == 0))[::4]:
        x = load_audio(clips[rows["clip_id"][i]].audio, CFG)
        expected = reference_features(split_segments(change_speed(x, CFG.sample_rate, rows["speed"][i]), CFG), CFG)
        assert np.abs(rows["audio"][i : i + 3] - expected).max() < 1e-4
    for name, variant in [("semitones", "pitch"), ("speed", "speed"), ("snr_db", "noise"), ("gain", "mix")]:
        assert np.all(np.isfinite(rows[name][rows["variant"] == variant]))
        assert np.all(np.isnan(rows[name][rows["variant"] != variant]))
    speeds = rows["speed"][rows["variant"] == "speed"]
    assert np.all((speeds >= 0.6) & (speeds <= 0.65)) and len(set(speeds)) == 12
    speed = rows["variant"] == "speed"
    assert set(rows["segment"][speed]) == {0, 1, 2}
    assert np.array_equal(rows["video_ref_segment"][speed], np.minimum(rows["segment"][speed], 1))
    assert verify_folder(work / "train-aug") == []


def test_video_references_resolve_to_the_frames_of_the_original_segment(augmented):
    root, features, _, _ = augmented
    clips = {c.clip_id: c for c in load_tau(root, "train")}
    rows = all_rows(features / "train-aug")
    where = row_locations(features / "train")
    assert np.array_equal(rows["video_ref_segment"], rows["segment"])  # every operation keeps the length
    assert np.array_equal(rows["video_ref_clip"], rows["clip_id"])
    frames = {cid: read_frame_pairs(c.video, 2, CFG.frame_times) for cid, c in clips.items()}
    for ref_clip, ref_segment in zip(rows["video_ref_clip"], rows["video_ref_segment"]):
        shard, row = where[(ref_clip, int(ref_segment))]
        with h5py.File(features / "train" / shard, "r") as handle:
            np.testing.assert_array_equal(handle["video"][row], frames[ref_clip][ref_segment])
    index = load_index(features / "train-aug")
    assert index["video_source"] == "../train" and index["rows"] == len(rows["audio"])


@pytest.mark.slow
def test_jobs_order_and_parts_do_not_change_the_bytes(augmented, tmp_path):
    root, features, config, _ = augmented
    work = tmp_path / "f"
    shutil.copytree(features / "train", work / "train")
    augment(root, work, config, jobs=2)
    assert_same_folders(work / "train-aug", features / "train-aug")
    parts = tmp_path / "p"
    shutil.copytree(features / "train", parts / "train")
    for i in (2, 1):
        augment(root, parts, config, part=(i, 2))
    assert not (parts / "train-aug" / "index.json").exists()
    build_index(parts / "train-aug")
    assert_same_folders(parts / "train-aug", features / "train-aug")
    assert load_index(parts / "train-aug") == load_index(features / "train-aug")
    reordered = tmp_path / "r"
    shutil.copytree(features / "train", reordered / "train")
    clips = load_tau(root, "train")
    augment_split(clips[1:] + clips[:1], reordered / "train", reordered / "train-aug", config,
                  shard_size=10, progress=False)
    first = [p for p in list_shards(reordered / "train-aug")]
    ids = np.concatenate([read_columns(p, ["clip_id"])["clip_id"] for p in first])
    rows = all_rows(reordered / "train-aug")
    ref = all_rows(features / "train-aug")
    for cid in set(ids):  # the same clip gets the same bytes whatever its place in the manifest
        np.testing.assert_array_equal(rows["audio"][rows["clip_id"] == cid], ref["audio"][ref["clip_id"] == cid])


@pytest.mark.slow
def test_rerun_keeps_shards_and_refuses_other_settings(augmented, tmp_path):
    root, features, config, _ = augmented
    work = tmp_path / "f"
    shutil.copytree(features, work)
    summary = augment(root, work, config)
    assert summary.shards_written == [] and len(summary.shards_kept) == len(list_shards(work / "train-aug"))
    other = OfflineAugmentConfig(copies=2, seed=4)
    with pytest.raises(ConfigMismatchError, match=r"augment_config\.seed: 3 != 4"):
        augment(root, work, other)
    with pytest.raises(ConfigMismatchError, match="n_mels: 128 != 64"):
        augment(root, work, config, feature_config=FeatureConfig(n_mels=64))
    augment(root, work, other, overwrite=True)
    assert json.loads(read_attrs(list_shards(work / "train-aug")[0])["augment_config"])["seed"] == 4
    with pytest.raises(ValueError, match="run `avsc-features extract`"):
        augment(root, tmp_path / "nothing", config)


@pytest.mark.slow
def test_kill_at_any_moment_then_resume_gives_identical_arrays(extracted, tmp_path, kill_when_shards):
    root, features = extracted
    config = OfflineAugmentConfig(ops=("pitch", "noise"), copies=2)
    clean = tmp_path / "clean"
    shutil.copytree(features / "train", clean / "train")
    augment(root, clean, config, shard_size=2)
    crashed = tmp_path / "crashed"
    shutil.copytree(features / "train", crashed / "train")
    script = (
        "import sys; from avsc_pipeline.features.offline_augment_shards import augment_split; "
        "from avsc_pipeline.sections.features import OfflineAugmentConfig; from avsc_pipeline.corpus.tau import load_tau; "
        f"augment_split(load_tau({str(root)!r}, 'train'), sys.argv[1] + '/train', sys.argv[1] + '/train-aug', "
        "OfflineAugmentConfig(ops=('pitch', 'noise'), copies=2), shard_size=2, progress=False)"
    )
    done = kill_when_shards([sys.executable, "-c", script, str(crashed)], crashed / "train-aug", 5)
    total = len(list_shards(clean / "train-aug"))
    assert 0 < done < total, f"expected the kill mid-way, {done} of {total} shards were finished"
    summary = augment(root, crashed, config, shard_size=2)
    assert len(summary.shards_kept) >= done and not list((crashed / "train-aug").glob("*.tmp"))
    assert_same_folders(crashed / "train-aug", clean / "train-aug")
    assert load_index(crashed / "train-aug") == load_index(clean / "train-aug")


def test_bad_input_is_skipped_and_reported_and_strict_fails(tmp_path, caplog):
    root = make_tau_dataset(tmp_path / "ds", n_clips=8, seconds=3.0, classes=["bus", "park"], video_seconds=2.2)
    clips = stage_one(root, tmp_path / "f")  # 4 bus clips; segment 2 dropped (video too short)
    broken = clips[0].audio
    broken.write_bytes(b"RIFF" + bytes(range(256)) * 8)  # undecodable after stage one
    config = OfflineAugmentConfig(ops=("speed", "mix"), speed_factor=(0.9, 0.9))
    summary = augment(root, tmp_path / "f", config)
    reasons = [(s["clip_id"], s["reason"]) for s in summary.skipped]
    assert any(cid == clips[0].clip_id and "cannot decode" in r for cid, r in reasons)
    assert any("mix copy 0" in r and "cannot decode" in r for _, r in reasons)  # clips whose partner is broken
    assert any("without a stage-one video row" in r for _, r in reasons)
    rows = all_rows(tmp_path / "f" / "train-aug")
    assert clips[0].clip_id not in set(rows["clip_id"])
    assert rows["video_ref_segment"].max() == 1 and rows["segment"][rows["variant"] == "speed"].max() == 1
    assert verify_folder(tmp_path / "f" / "train-aug") == []
    assert "cannot decode" in caplog.text
    with pytest.raises(BadClipError, match="cannot decode"):
        augment(root, tmp_path / "f", config, strict=True, overwrite=True)
    assert list_shards(tmp_path / "f" / "train-aug") == [] and not list((tmp_path / "f" / "train-aug").glob("*.tmp"))


def test_verify_catches_references_that_do_not_resolve(augmented, tmp_path):
    _, features, _, _ = augmented
    work = tmp_path / "f"
    shutil.copytree(features, work)
    shard = list_shards(work / "train-aug")[0]
    with h5py.File(shard, "r+") as handle:
        handle["video_ref_segment"][0] = 9
        handle["label"][1] = (handle["label"][1] + 1) % 4
    problems = verify_folder(work / "train-aug")
    assert any("1 video references do not resolve" in p and "9)" in p for p in problems)
    assert any("another label than their video row" in p for p in problems)
    shutil.rmtree(work / "train")
    assert any("video source '../train'" in p for p in verify_folder(work / "train-aug"))


def test_cli_augment_index_and_verify(extracted, tmp_path):
    root, features = extracted
    work = tmp_path / "f"
    shutil.copytree(features / "train", work / "train")
    (tmp_path / "c.yaml").write_text("offline_augment:\n  ops: [pitch, mix]\n  mix_gain: [0.5, 0.5]\n")
    runner = CliRunner()
    args = ["augment", str(root), str(work), "--config", str(tmp_path / "c.yaml"), "--copies", "2",
            "--seed", "1", "--no-progress"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "train-aug: wrote" in result.output
    rows = all_rows(work / "train-aug")
    assert set(rows["variant"]) == {"pitch", "mix"} and set(rows["gain"][rows["variant"] == "mix"]) == {0.5}
    assert set(rows["copy"]) == {0, 1}
    (work / "train-aug" / "index.json").unlink()
    result = runner.invoke(main, ["index", str(work)])
    assert result.exit_code == 0 and "train-aug" in result.output
    assert load_index(work / "train-aug")["video_source"] == "../train"
    result = runner.invoke(main, ["verify", str(work)])
    assert result.exit_code == 0 and "2 folder(s) OK" in result.output
    bad = runner.invoke(main, ["augment", str(root), str(work), "--ops", "pitch,reverb"])
    assert bad.exit_code != 0 and "expected distinct ops" in bad.output
    (tmp_path / "f.yaml").write_text("features:\n  n_mels: 64\n")
    bad = runner.invoke(main, ["augment", str(root), str(work), "--config", str(tmp_path / "f.yaml")])
    assert bad.exit_code != 0 and "n_mels: 128 != 64" in bad.output
    assert "--copies" in runner.invoke(main, ["augment", "--help"]).output


@pytest.mark.slow
def test_dask_backend_gives_the_same_bytes(augmented, tmp_path):
    distributed = pytest.importorskip("distributed", reason="the [dask] extra is not installed")
    root, features, config, _ = augmented
    work = tmp_path / "f"
    shutil.copytree(features / "train", work / "train")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        augment(root, work, config, jobs=2, backend="dask", scheduler=cluster.scheduler_address)
    assert_same_folders(work / "train-aug", features / "train-aug")
