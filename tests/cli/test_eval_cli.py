"""avsc-eval, avsc-predict and avsc-report through click's CliRunner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.evaluation.output_file import read_predictions
from avsc_pipeline.testing import write_test_checkpoint
from avsc_pipeline.corpus.tau import load_tau
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import write_random_shard
from avsc_pipeline_cli.calibrate import main as calibrate_main
from avsc_pipeline_cli.eval import main as eval_main
from avsc_pipeline_cli.predict import main as predict_main
from avsc_pipeline_cli.predict import pair_inputs
from avsc_pipeline_cli.report import main as report_main

FEATURES = FeatureConfig(image_size=32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Random shards (a labeled and an unlabeled split) and a joint checkpoint in a run folder."""
    root = tmp_path_factory.mktemp("cli-eval")
    for split, seed in (("evaluate", 0), ("test", 1)):
        path = write_random_shard(root / "features" / split / "shard-00000.h5", 30, FEATURES, seed=seed)
        if split == "test":
            with h5py.File(path, "r+") as handle:
                handle["label"][...] = -1
        build_index(root / "features" / split)
    ckpt = write_test_checkpoint(root / "runs" / "joint" / "best.pt", root / "features" / "evaluate")
    return root, ckpt


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("command", [eval_main, predict_main, report_main, calibrate_main])
def test_help(runner, command):
    result = runner.invoke(command, ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_eval_prints_both_tables_and_writes_the_files(runner, setup):
    root, ckpt = setup
    result = runner.invoke(eval_main, ["--checkpoint", str(ckpt), str(root / "features" / "evaluate"), "--no-progress",
                                       "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    out = ckpt.parent / "eval" / "evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    lines = result.output.splitlines()
    segment_row = next(line for line in lines if line.startswith("segments "))
    clip_row = next(line for line in lines if line.startswith("clips "))
    assert f"{100 * metrics['accuracy']:.1f} %" in segment_row and f"{metrics['log_loss']:.3f}" in segment_row
    assert f"{metrics['clip_log_loss']:.3f}" in clip_row and " 3 " in clip_row  # 30 rows = 3 clips
    assert "segments/s" in result.output
    assert len(read_predictions(out / "predictions.tsv")[0]) == 30 and (out / "confusion_matrix.png").is_file()


def test_eval_of_an_unlabeled_split_says_no_metrics(runner, setup, tmp_path):
    root, ckpt = setup
    result = runner.invoke(eval_main, ["--checkpoint", str(ckpt), str(root / "features" / "test"), "--no-progress",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no metrics were computed" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.tsv"]


@pytest.mark.parametrize("damage", ["truncate", "empty", "foreign", "missing"])
def test_eval_of_a_damaged_checkpoint_is_one_line(runner, setup, tmp_path, damage):
    root, ckpt = setup
    broken = tmp_path / "broken.pt"
    data = ckpt.read_bytes()
    if damage == "truncate":
        broken.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "empty":
        broken.write_bytes(b"")
    elif damage == "foreign":
        broken.write_text("model weights, honestly\n")
    result = runner.invoke(eval_main, ["--checkpoint", str(broken), str(root / "features" / "evaluate")])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {broken}: ")


def test_eval_refuses_one_modality_of_a_non_joint_checkpoint(runner, setup, tmp_path):
    root, _ = setup
    audio = write_test_checkpoint(tmp_path / "audio" / "best.pt", root / "features" / "evaluate", modality="audio")
    result = runner.invoke(eval_main, ["--checkpoint", str(audio), str(root / "features" / "evaluate"),
                                       "--modality", "video", "--no-progress"])
    assert result.exit_code == 1 and "needs a joint checkpoint" in result.output


def test_report_on_two_evaluations(runner, setup, tmp_path):
    root, ckpt = setup
    evaluate = str(root / "features" / "evaluate")
    for extra in ([], ["--modality", "audio"]):
        result = runner.invoke(eval_main, ["--checkpoint", str(ckpt), evaluate, "--no-progress"] + extra)
        assert result.exit_code == 0, result.output
    both, audio = ckpt.parent / "eval" / "evaluate", ckpt.parent / "eval" / "evaluate-audio"
    result = runner.invoke(report_main, [str(both), str(audio), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "report" / "report.csv", encoding="utf-8")))
    assert [r["run"] for r in rows] == ["joint", "joint (evaluate-audio)"]
    for row, folder in zip(rows, (both, audio)):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert float(row["log_loss"]) == pytest.approx(metrics["log_loss"])
        assert f"{metrics['log_loss']:.3f}" in result.output
    assert (tmp_path / "report" / "per_class_accuracy.png").is_file() and (tmp_path / "report" / "report.md").is_file()
    result = runner.invoke(report_main, [str(tmp_path)])
    assert result.exit_code == 1 and "found none of these" in result.output


def test_predict_pairs_a_failure_and_the_output_files(runner, setup, tau_root, tmp_path):
    _, ckpt = setup
    clips = load_tau(tau_root, "evaluate")
    args = [str(clips[0].audio), str(clips[0].video), str(tmp_path / "missing.wav"), str(clips[1].video),
            str(clips[2].audio), str(clips[2].video)]
    out = tmp_path / "preds.tsv"
    result = runner.invoke(predict_main, ["--checkpoint", str(ckpt), "--device", "cpu", "--out", str(out)] + args)
    assert result.exit_code == 1
    assert f"{tmp_path / 'missing.wav'}: audio file not found" in result.output
    assert "1 of 3 recordings failed" in result.output
    names, _, probs, _ = read_predictions(out)
    # rows are named after the files as given, not a guessed `audio/<id>.wav`
    assert names == [str(c.audio.with_name(f"{c.audio.stem}-{k}.wav")) for c in (clips[0], clips[2]) for k in range(3)]
    clip_names, clip_labels, clip_probs, _ = read_predictions(tmp_path / "preds.clips.tsv")
    assert clip_names == [str(clips[0].audio), str(clips[2].audio)]
    for name, label, row in zip(clip_names, clip_labels, clip_probs):
        line = next(line for line in result.output.splitlines() if line.startswith(Path(name).stem + " "))
        assert line.split()[1:3] == [label, f"{row.max():.3f}"]


def test_predict_a_manifest(runner, setup, tau_root):
    _, ckpt = setup
    result = runner.invoke(predict_main, ["--checkpoint", str(ckpt), "--manifest", str(tau_root), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert all(clip.clip_id in result.output for clip in load_tau(tau_root, "test"))
    result = runner.invoke(predict_main, ["--checkpoint", str(ckpt)])
    assert result.exit_code == 2 and "or --manifest" in result.output


def test_pair_inputs(tmp_path):
    from pathlib import Path

    import click

    assert pair_inputs([Path("a.wav"), Path("a.mp4"), Path("b.wav"), Path("c.wav"), Path("c.MP4")]) == [
        (Path("a.wav"), Path("a.mp4")), (Path("b.wav"), None), (Path("c.wav"), Path("c.MP4"))]
    # A video on its own is a recording of its own: its sound comes from its audio track.
    assert pair_inputs([Path("a.mp4")]) == [(Path("a.mp4"), Path("a.mp4"))]
    assert pair_inputs([Path("a.wav"), Path("a.mp4"), Path("b.mp4")]) == [
        (Path("a.wav"), Path("a.mp4")), (Path("b.mp4"), Path("b.mp4"))]


def test_predict_a_lone_mp4_from_its_own_sound(runner, setup, shared_mini, tmp_path):
    import numpy as np

    from avsc_pipeline.evaluation.output_file import read_predictions

    _, ckpt = setup
    mp4 = sorted((shared_mini / "video").glob("*.mp4"))[0]
    wav = shared_mini / "audio" / f"{mp4.stem}.wav"
    lone = runner.invoke(predict_main, ["--checkpoint", str(ckpt), str(mp4), "--out", str(tmp_path / "lone.tsv"),
                                        "--no-progress"])
    assert lone.exit_code == 0, lone.output
    assert f"sound from the audio track of {mp4.name}" in lone.output
    paired = runner.invoke(predict_main, ["--checkpoint", str(ckpt), str(wav), str(mp4), "--out",
                                          str(tmp_path / "paired.tsv"), "--no-progress"])
    assert paired.exit_code == 0, paired.output
    _, _, from_track, _ = read_predictions(tmp_path / "lone.tsv")
    _, _, from_wav, _ = read_predictions(tmp_path / "paired.tsv")
    # The WAV is the MP4's MP3 sound decoded and resampled elsewhere: the same scene, not the same bits.
    assert from_track.shape == from_wav.shape and np.abs(from_track - from_wav).max() < 0.2


def test_predict_a_lone_mp4_without_sound_says_so(runner, setup, tmp_path):
    from avsc_pipeline.testing import write_video

    _, ckpt = setup
    silent = write_video(tmp_path / "silent.mp4", 60)
    result = runner.invoke(predict_main, ["--checkpoint", str(ckpt), str(silent), "--no-progress"])
    assert result.exit_code == 1 and "no audio stream" in result.output


def test_eval_pointed_at_the_features_root_lists_its_splits(runner, setup):
    root, checkpoint = setup
    result = runner.invoke(eval_main, ["--checkpoint", str(checkpoint), str(root / "features"), "--no-progress"])
    assert result.exit_code != 0 and "expected one split folder" in result.output
    assert "evaluate" in result.output and "Traceback" not in result.output


def _one_line_error(result, *parts):
    """A click error: exit status 1, one line `Error: ...` holding every part, no traceback."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(str(part) in lines[0] for part in parts), (lines[0], parts)


def test_bad_ensembles_and_calibrations_are_refused_in_one_line(runner, setup, tmp_path):
    root, ckpt = setup
    evaluate, test = root / "features" / "evaluate", root / "features" / "test"
    result = runner.invoke(eval_main, ["--checkpoint", str(ckpt), "--checkpoint", str(ckpt), "--weights", "0.5",
                                       str(evaluate), "--no-progress"])
    _one_line_error(result, "--weights: expected 2 weights, one per checkpoint, got 1")
    other = write_random_shard(tmp_path / "other" / "shard-00000.h5", 10, FEATURES, classes=list("abcdefghij"))
    build_index(other.parent)
    foreign = write_test_checkpoint(tmp_path / "foreign" / "best.pt", other.parent)
    result = runner.invoke(eval_main, ["--checkpoint", str(ckpt), "--checkpoint", str(foreign), str(evaluate)])
    _one_line_error(result, ckpt, foreign, "expected the same class list", "classes[0]: 'airport' != 'a'")
    result = runner.invoke(calibrate_main, ["--checkpoint", str(ckpt), str(test), "--out", str(tmp_path / "c.pt"),
                                            "--no-progress"])
    _one_line_error(result, test, "expected labeled segments to fit a temperature on, got none")
    assert not (tmp_path / "c.pt").exists()
    before = ckpt.read_bytes()
    result = runner.invoke(calibrate_main, ["--checkpoint", str(ckpt), str(evaluate), "--out", str(ckpt)])
    _one_line_error(result, f"--out {ckpt}: already exists", "never overwrites")
    assert ckpt.read_bytes() == before
    result = runner.invoke(calibrate_main, ["--checkpoint", str(ckpt), "--checkpoint", str(ckpt), str(evaluate),
                                            "--out", str(tmp_path / "ens.pt")])
    _one_line_error(result, "--out", "expected an ensemble file name ending in .yaml")


@pytest.mark.slow
def test_calibrate_a_checkpoint_and_an_ensemble_then_score_them(runner, setup, tmp_path):
    import numpy as np
    from sklearn.metrics import log_loss

    from avsc_pipeline.evaluation.temperature import apply_temperature
    from avsc_pipeline.models.checkpoint import load_checkpoint

    root, ckpt = setup
    evaluate = str(root / "features" / "evaluate")
    audio = write_test_checkpoint(tmp_path / "audio" / "best.pt", root / "features" / "evaluate", modality="audio")
    raw_dir = tmp_path / "raw"
    assert runner.invoke(eval_main, ["--checkpoint", str(ckpt), evaluate, "--no-calibration", "--out", str(raw_dir),
                                     "--no-progress"]).exit_code == 0
    names, _, raw, classes = read_predictions(raw_dir / "predictions.tsv")
    labels = np.array([classes.index(c) for c in _labels_of(root / "features" / "evaluate")])
    new = tmp_path / "calibrated.pt"
    result = runner.invoke(calibrate_main, ["--checkpoint", str(ckpt), evaluate, "--out", str(new), "--no-progress"])
    assert result.exit_code == 0, result.output
    fitted = load_checkpoint(new).artifact.temperature
    grid = np.exp(np.linspace(-3, 3, 1201))
    best = grid[np.argmin([log_loss(labels, apply_temperature(raw, t), labels=range(10)) for t in grid])]
    assert fitted == pytest.approx(best, rel=0.02) and f"temperature {fitted:.4g}" in result.output
    assert load_checkpoint(new).resume is None
    ens = tmp_path / "ens.yaml"
    result = runner.invoke(calibrate_main, ["--checkpoint", str(new), "--checkpoint", str(audio), "--weights", "1,3",
                                            evaluate, "--out", str(ens), "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "ens-eval"
    result = runner.invoke(eval_main, ["--checkpoint", str(ens), evaluate, "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["weight"] for m in metrics["members"]] == [0.25, 0.75] and metrics["members"][0]["temperature"] == fitted
    assert "ensemble (arithmetic mean) of 2" in result.output and "uncalibrated" in result.output
    members = []
    for member, folder in ((new, tmp_path / "m1"), (audio, tmp_path / "m2")):
        assert runner.invoke(eval_main, ["--checkpoint", str(member), evaluate, "--out", str(folder),
                                         "--no-progress"]).exit_code == 0
        members.append(read_predictions(folder / "predictions.tsv")[2])
    expected = apply_temperature(0.25 * members[0] + 0.75 * members[1], metrics["temperature"])
    np.testing.assert_allclose(read_predictions(out / "predictions.tsv")[2], expected, rtol=0, atol=1e-6)
    assert (out / "calibration.png").is_file() and 0 <= metrics["ece"] <= 1
    result = runner.invoke(report_main, [str(tmp_path / "m1"), str(out), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "uncal. log loss" in result.output and "ens-eval" in result.output
    assert f"{metrics['log_loss_uncalibrated']:.3f}" in result.output


def _labels_of(split_dir):
    from avsc_pipeline.storage.index import load_index

    classes = load_index(split_dir)["classes"]
    with h5py.File(split_dir / "shard-00000.h5", "r") as handle:
        return [classes[int(k)] for k in handle["label"][()]]


@pytest.mark.slow
def test_predict_an_ensemble_with_tta_and_log_pooling(runner, setup, tau_root, tmp_path):
    import numpy as np

    _, ckpt = setup
    clip = load_tau(tau_root, "evaluate")[0]
    files = [str(clip.audio), str(clip.video), "--no-progress", "--device", "cpu", "--tta", "swap"]
    single, ens = tmp_path / "single.tsv", tmp_path / "ens.tsv"
    result = runner.invoke(predict_main, ["--checkpoint", str(ckpt), "--out", str(single)] + files)
    assert result.exit_code == 0, result.output
    result = runner.invoke(predict_main, ["--checkpoint", str(ckpt), "--checkpoint", str(ckpt), "--weights", "1,2",
                                          "--clip-pool", "mean-log-prob", "--out", str(ens)] + files)
    assert result.exit_code == 0, result.output
    segments = read_predictions(single)[2]
    np.testing.assert_allclose(read_predictions(ens)[2], segments, rtol=0, atol=1e-6)
    logs = np.log(segments).mean(axis=0)
    np.testing.assert_allclose(read_predictions(tmp_path / "ens.clips.tsv")[2][0], np.exp(logs) / np.exp(logs).sum(),
                               rtol=0, atol=1e-6)
    result = runner.invoke(predict_main, ["--checkpoint", str(ckpt), "--checkpoint", str(ckpt), "--weights", "1,2,3"]
                           + files)
    _one_line_error(result, "--weights: expected 2 weights")
