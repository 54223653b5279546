"""Stage-one extraction end to end: contents, determinism, bad input, crash and resume, parts."""

import shutil
import sys

import h5py
import numpy as np
import pytest

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.errors import BadClipError, ConfigMismatchError
from avsc_pipeline.features.audio import load_audio, reference_features, split_segments
from avsc_pipeline.features.extract import extract_split, plan_shards
from avsc_pipeline.features.video import read_frame_pairs
from avsc_pipeline.corpus.tau import TAU_CLASSES, load_tau
from avsc_pipeline.storage.columns import read_columns
from avsc_pipeline.storage.index import build_index, load_index
from avsc_pipeline.features.verify import verify_folder
from avsc_pipeline.storage.shards import SCHEMA_VERSION, list_shards, read_attrs
from avsc_pipeline.testing import make_tau_dataset, noisy_tone, write_video, write_wav

CFG = FeatureConfig()


def extract(root, out, split="train", **kwargs):
    clips = load_tau(root, split)
    kwargs.setdefault("progress", False)
    return extract_split(clips, out / split, CFG, list(TAU_CLASSES), **kwargs)


def all_rows(folder):
    rows = [read_columns(p) for p in list_shards(folder)]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def test_shard_contents_match_independent_computation(tau_root, tmp_path):
    summary = extract(tau_root, tmp_path, shard_size=4)
    folder = tmp_path / "train"
    assert [p.name for p in list_shards(folder)] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert summary.rows == 9 and not summary.skipped
    rows = all_rows(folder)
    clips = load_tau(tau_root, "train")
    start = 0
    for clip in clips:
        seg = split_segments(load_audio(clip.audio, CFG), CFG)
        sl = slice(start, start + len(seg))
        assert np.abs(rows["audio"][sl] - reference_features(seg, CFG)).max() < 1e-3
        np.testing.assert_array_equal(rows["video"][sl], read_frame_pairs(clip.video, 3, CFG.frame_times))
        assert set(rows["clip_id"][sl]) == {clip.clip_id}
        assert list(rows["segment"][sl]) == [0, 1, 2]
        assert set(rows["label"][sl]) == {TAU_CLASSES.index(clip.label)}
        assert set(rows["identifier"][sl]) == {clip.identifier}
        start += len(seg)
    assert set(rows["variant"]) == {"orig"}
    attrs = read_attrs(list_shards(folder)[0])
    assert attrs["classes"] == list(TAU_CLASSES) and attrs["feature_config"]["n_mels"] == 128
    assert attrs["datasets"]["audio"] == ((3, 6, 128, 39), "float32")
    assert attrs["datasets"]["label"][1] == "int16" and attrs["created_by"].startswith("avsc-pipeline")
    with h5py.File(list_shards(folder)[0], "r") as handle:
        assert handle["audio"].chunks is None and handle["video"].compression is None  # contiguous
    index = load_index(folder)
    assert index["rows"] == 9 and [s["rows"] for s in index["shards"]] == [3, 3, 3]
    assert sum(index["class_counts"].values()) == 9 and index["skipped"] == []
    assert verify_folder(folder) == []


def test_jobs_do_not_change_the_result(tau_root, tmp_path):
    extract(tau_root, tmp_path / "a", split="all", shard_size=7, jobs=1)
    extract(tau_root, tmp_path / "b", split="all", shard_size=7, jobs=2)
    a, b = tmp_path / "a" / "all", tmp_path / "b" / "all"
    assert [p.name for p in list_shards(a)] == [p.name for p in list_shards(b)]
    for pa, pb in zip(list_shards(a), list_shards(b)):
        ra, rb = read_columns(pa), read_columns(pb)
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{pa.name}:{key}")


def test_plan_is_deterministic_and_bounded(tau_root):
    clips = load_tau(tau_root, "all")
    plans = plan_shards(clips, CFG, shard_size=7)
    assert [len(p.clips) for p in plans] == [2, 2, 2] and all(p.segments <= 7 for p in plans)
    assert [p.plan_hash for p in plans] == [p.plan_hash for p in plan_shards(clips, CFG, 7)]


@pytest.fixture
def broken_root(tmp_path):
    """Eight train clips: five bad in different ways, one with a short video, two good."""
    root = make_tau_dataset(tmp_path / "ds", n_clips=16, seconds=2.0)
    train = load_tau(root, "train")
    train[0].audio.unlink()                                   # missing audio
    train[1].video.write_bytes(b"")                           # empty video
    write_wav(train[2].audio, noisy_tone(0.6))                # shorter than a second
    train[3].audio.write_bytes(train[3].audio.read_bytes()[:40])  # truncated header
    data = train[4].video.read_bytes()
    train[4].video.write_bytes(data[:64] + b"\x00" * (len(data) - 64))  # undecodable video
    write_video(train[5].video, n_frames=40, fps=30)          # 1.33 s of video for 2 s of audio
    return root


def test_shards_keep_each_clips_files_as_the_list_names_them(tau_root, tmp_path):
    extract(tau_root, tmp_path, shard_size=4)
    rows = all_rows(tmp_path / "train")
    assert rows["audio_file"].tolist() == [f"audio/{c}.wav" for c in rows["clip_id"]]
    assert rows["video_file"].tolist() == [f"video/{c}.mp4" for c in rows["clip_id"]]
    assert read_attrs(list_shards(tmp_path / "train")[0])["schema_version"] == SCHEMA_VERSION


def test_a_rerun_writes_schema_1_shards_again_in_schema_2(tau_root, tmp_path):
    extract(tau_root, tmp_path, shard_size=4)
    first, second = list_shards(tmp_path / "train")[:2]
    with h5py.File(first, "a") as handle:  # as schema 1 wrote it: no file names
        handle.attrs["schema_version"] = 1
        del handle["audio_file"], handle["video_file"]
    summary = extract(tau_root, tmp_path, shard_size=4)
    assert summary.shards_written == [first.name] and second.name in summary.shards_kept
    assert read_attrs(first)["schema_version"] == SCHEMA_VERSION and "audio_file" in read_attrs(first)["datasets"]


def test_bad_input_is_skipped_reported_and_indexed(broken_root, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        summary = extract(broken_root, tmp_path, shard_size=4)
    train = load_tau(broken_root, "train")
    reasons = {item["clip_id"]: (item["file"], item["reason"]) for item in summary.skipped}
    assert reasons[train[0].clip_id] == (str(train[0].audio), "audio file not found")
    assert reasons[train[1].clip_id] == (str(train[1].video), "video file is empty")
    assert "too short" in reasons[train[2].clip_id][1]
    assert reasons[train[3].clip_id][0] == str(train[3].audio)
    assert reasons[train[4].clip_id][0] == str(train[4].video)
    assert "dropped the last 1 segment" in reasons[train[5].clip_id][1]
    assert str(train[0].audio) in caplog.text
    rows = all_rows(tmp_path / "train")
    kept = {c: int((rows["clip_id"] == c).sum()) for c in set(rows["clip_id"])}
    assert kept == {train[5].clip_id: 1, train[6].clip_id: 2, train[7].clip_id: 2}
    index = load_index(tmp_path / "train")
    assert len(index["skipped"]) == 6 and index["rows"] == 5
    assert verify_folder(tmp_path / "train") == []


def test_strict_fails_on_first_bad_clip_and_leaves_no_partial_shard(broken_root, tmp_path):
    with pytest.raises(BadClipError, match="audio file not found"):
        extract(broken_root, tmp_path, shard_size=4, strict=True)
    assert list_shards(tmp_path / "train") == []
    assert not list((tmp_path / "train").glob("*.tmp"))


def test_rerun_keeps_finished_shards_and_refuses_other_config(tau_root, tmp_path):
    extract(tau_root, tmp_path, shard_size=4)
    first = list_shards(tmp_path / "train")[0]
    mtime = first.stat().st_mtime_ns
    summary = extract(tau_root, tmp_path, shard_size=4)
    assert summary.shards_written == [] and len(summary.shards_kept) == 3
    assert first.stat().st_mtime_ns == mtime
    other = FeatureConfig(n_mels=64)
    with pytest.raises(ConfigMismatchError, match="n_mels: 128 != 64"):
        extract_split(load_tau(tau_root, "train"), tmp_path / "train", other, list(TAU_CLASSES), progress=False)
    with pytest.raises(ConfigMismatchError, match="shard_size: 4 != 5"):
        extract(tau_root, tmp_path, shard_size=5)
    extract_split(load_tau(tau_root, "train"), tmp_path / "train", other, list(TAU_CLASSES),
                  shard_size=4, overwrite=True, progress=False)
    assert read_attrs(first)["feature_config"]["n_mels"] == 64


def test_parts_then_index_equal_a_single_run(tau_root, tmp_path):
    extract(tau_root, tmp_path / "whole", split="all", shard_size=4)
    for i in (1, 2, 3):
        extract(tau_root, tmp_path / "parts", split="all", shard_size=4, part=(i, 3))
    parts = tmp_path / "parts" / "all"
    assert not (parts / "index.json").exists()
    build_index(parts)
    whole = load_index(tmp_path / "whole" / "all")
    assert load_index(parts) == whole
    for pa, pb in zip(list_shards(parts), list_shards(tmp_path / "whole" / "all")):
        np.testing.assert_array_equal(read_columns(pa, ["audio"])["audio"], read_columns(pb, ["audio"])["audio"])


@pytest.mark.slow
def test_crash_at_any_moment_then_resume_gives_identical_arrays(tmp_path, kill_when_shards):
    root = make_tau_dataset(tmp_path / "ds", n_clips=12, seconds=2.0)
    extract(root, tmp_path / "clean", split="all", shard_size=2)
    crashed = tmp_path / "crashed"
    script = (
        "import sys; from avsc_pipeline.features.extract import extract_split; "
        "from avsc_pipeline.corpus.tau import load_tau, TAU_CLASSES; from avsc_pipeline.sections.features import FeatureConfig; "
        f"extract_split(load_tau({str(root)!r}, 'all'), sys.argv[1], FeatureConfig(), list(TAU_CLASSES), "
        "shard_size=2, progress=False)"
    )
    done = kill_when_shards([sys.executable, "-c", script, str(crashed / "all")], crashed / "all", 3)
    assert 0 < done < 12, f"expected the kill mid-way, {done} shards were finished"
    summary = extract(root, crashed, split="all", shard_size=2)
    assert len(summary.shards_kept) >= done
    assert not list((crashed / "all").glob("*.tmp"))
    clean = tmp_path / "clean" / "all"
    assert [p.name for p in list_shards(crashed / "all")] == [p.name for p in list_shards(clean)]
    for pa, pb in zip(list_shards(crashed / "all"), list_shards(clean)):
        ra, rb = read_columns(pa), read_columns(pb)
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key])
    assert load_index(crashed / "all") == load_index(clean)


@pytest.mark.slow
def test_dask_backend_against_a_local_cluster(tau_root, tmp_path):
    distributed = pytest.importorskip("distributed", reason="the [dask] extra is not installed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        extract(tau_root, tmp_path / "dask", shard_size=4, jobs=2, backend="dask", scheduler=cluster.scheduler_address)
    extract(tau_root, tmp_path / "loky", shard_size=4)
    dask, loky = list_shards(tmp_path / "dask" / "train"), list_shards(tmp_path / "loky" / "train")
    assert dask and [p.name for p in dask] == [p.name for p in loky], "the dask run wrote other shards (or none)"
    for pa, pb in zip(dask, loky):
        ra, rb = read_columns(pa), read_columns(pb)
        for key in ra:
            np.testing.assert_array_equal(ra[key], rb[key])


def test_verify_catches_corrupted_shards(tau_root, tmp_path):
    extract(tau_root, tmp_path, shard_size=4)
    folder = tmp_path / "train"
    shards = list_shards(folder)
    with h5py.File(shards[0], "r+") as handle:
        handle["audio"][0, 0, 0, 0] = np.nan
        handle["label"][1] = 42
    data = bytearray(shards[1].read_bytes())
    data[:8] = b"garbage!"
    shards[1].write_bytes(bytes(data))
    shutil.copy(shards[2], folder / "shard-00009.h5")
    problems = verify_folder(folder)
    text = "\n".join(problems)
    assert "non-finite audio" in text and "labels outside" in text
    assert "shard-00001.h5: cannot open as HDF5" in text
    assert "shard-00009.h5: not in the index" in text


def test_float16_storage(tau_root, tmp_path):
    cfg = FeatureConfig(audio_dtype="float16")
    extract_split(load_tau(tau_root, "train"), tmp_path / "t", cfg, list(TAU_CLASSES), progress=False)
    rows = all_rows(tmp_path / "t")
    assert rows["audio"].dtype == np.float16
    assert verify_folder(tmp_path / "t") == []


def test_real_clips_end_to_end(shared_mini, tmp_path):
    clips = load_tau(shared_mini, "all")[:2]
    extract_split(clips, tmp_path / "real", CFG, list(TAU_CLASSES), progress=False)
    rows = all_rows(tmp_path / "real")
    assert rows["audio"].shape == (20, 6, 128, 39) and rows["video"].shape == (20, 2, 3, 224, 224)
    assert set(rows["label"]) == {TAU_CLASSES.index("street_traffic")}
    assert set(rows["identifier"]) == {clips[0].identifier, clips[1].identifier}


def test_planned_samples_equal_the_resampled_length(tmp_path):
    from avsc_pipeline.features.extract import planned_samples
    from avsc_pipeline.corpus.clips import Clip

    path = write_wav(tmp_path / "a.wav", noisy_tone(2.0, sr=44100), sr=44100)
    clip = Clip("a", path, None, None, "a")
    assert planned_samples(clip, CFG) == load_audio(path, CFG).shape[1]
