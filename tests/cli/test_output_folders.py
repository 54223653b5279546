"""Every command makes (or checks) its output folder before the work, never after it; and the
small messages of issue 22: a split folder given to avsc-train, relative weights paths."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from avsc_pipeline.corpus.tau import load_tau
from avsc_pipeline.dataio.loader import ShardLoader
from avsc_pipeline.evaluation.output_file import read_predictions
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import write_random_shard, write_test_checkpoint
from avsc_pipeline_cli.calibrate import main as calibrate_main
from avsc_pipeline_cli.eval import main as eval_main
from avsc_pipeline_cli.predict import main as predict_main
from avsc_pipeline_cli.report import main as report_main
from avsc_pipeline_cli.train import main as train_main

FEATURES = FeatureConfig(image_size=32)


@pytest.fixture(scope="module")
def evaluate_split(tmp_path_factory):
    """A labeled split of random shards (30 rows, 3 clips)."""
    folder = tmp_path_factory.mktemp("out-folders") / "features" / "evaluate"
    write_random_shard(folder / "shard-00000.h5", 30, FEATURES, seed=0)
    build_index(folder)
    return folder


@pytest.fixture
def runner():
    return CliRunner()


def _watch_scoring(monkeypatch, folder):
    """Record, each time a loader starts a pass (the scoring), whether `folder` exists."""
    seen = []
    original = ShardLoader.__iter__

    def watched(self):
        seen.append(folder.is_dir())
        return original(self)

    monkeypatch.setattr(ShardLoader, "__iter__", watched)
    return seen


def test_predict_creates_the_folder_of_out_before_the_work(runner, evaluate_split, tau_root, tmp_path, monkeypatch):
    from avsc_pipeline.evaluation import recordings as predict

    ckpt = write_test_checkpoint(tmp_path / "run" / "best.pt", evaluate_split)
    out = tmp_path / "missing" / "deeper" / "p.tsv"
    seen = []
    original = predict.predict_files

    def watched(*args, **kwargs):
        seen.append(out.parent.is_dir())
        return original(*args, **kwargs)

    monkeypatch.setattr(predict, "predict_files", watched)
    clip = load_tau(tau_root, "evaluate")[0]
    result = runner.invoke(predict_main, ["--checkpoint", str(ckpt), str(clip.audio), str(clip.video), "--out",
                                          str(out), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert seen == [True]  # the folder was there when the work started
    names, _, _, _ = read_predictions(out)
    assert len(names) == 3 and all(name.endswith(f"{clip.clip_id}-{k}.wav") for k, name in enumerate(names))
    assert (out.parent / "p.clips.tsv").is_file()


def test_predict_refuses_an_out_below_a_file_before_the_work(runner, evaluate_split, tmp_path, monkeypatch):
    from avsc_pipeline.evaluation import recordings as predict

    ckpt = write_test_checkpoint(tmp_path / "run" / "best.pt", evaluate_split)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setattr(predict, "predict_files", lambda *a, **k: pytest.fail("the work started"))
    result = runner.invoke(predict_main, ["--checkpoint", str(ckpt), "rec.wav", "--out", str(blocker / "sub" / "p.tsv")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: --out's folder {blocker / 'sub'}: expected a folder, got a file at "
                                     f"{blocker}")


def test_eval_makes_its_default_folder_before_scoring(runner, evaluate_split, tmp_path, monkeypatch):
    ckpt = write_test_checkpoint(tmp_path / "run" / "best.pt", evaluate_split)
    out = tmp_path / "run" / "eval" / "evaluate"
    seen = _watch_scoring(monkeypatch, out)
    result = runner.invoke(eval_main, ["--checkpoint", str(ckpt), str(evaluate_split), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert seen and all(seen)
    assert json.loads((out / "metrics.json").read_text())["n_segments"] == 30


def test_eval_makes_a_missing_out_before_scoring_and_refuses_one_below_a_file(runner, evaluate_split, tmp_path,
                                                                               monkeypatch):
    ckpt = write_test_checkpoint(tmp_path / "run" / "best.pt", evaluate_split)
    out = tmp_path / "new" / "nested"
    seen = _watch_scoring(monkeypatch, out)
    result = runner.invoke(eval_main, ["--checkpoint", str(ckpt), str(evaluate_split), "--out", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert seen and all(seen) and (out / "predictions.tsv").is_file()

    (tmp_path / "a-file").write_text("x")
    seen.clear()
    result = runner.invoke(eval_main, ["--checkpoint", str(ckpt), str(evaluate_split), "--out",
                                       str(tmp_path / "a-file" / "out"), "--no-progress"])
    assert result.exit_code == 1 and not seen  # refused before any scoring
    assert "expected a folder, got a file at" in result.output and len(result.output.strip().splitlines()) == 1


def test_report_checks_its_out_first_and_creates_a_missing_one(runner, evaluate_split, tmp_path):
    ckpt = write_test_checkpoint(tmp_path / "run" / "best.pt", evaluate_split)
    assert runner.invoke(eval_main, ["--checkpoint", str(ckpt), str(evaluate_split), "--no-progress"]).exit_code == 0
    (tmp_path / "a-file").write_text("x")
    refused = runner.invoke(report_main, [str(tmp_path / "run"), "--out", str(tmp_path / "a-file" / "report")])
    assert refused.exit_code == 1 and "expected a folder, got a file at" in refused.output
    out = tmp_path / "missing" / "report"
    result = runner.invoke(report_main, [str(tmp_path / "run"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_report_refuses_a_read_only_out_before_reading_the_runs(runner, tmp_path):
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # The run does not exist either: the folder check comes first and names the folder.
        (tmp_path / "run").mkdir()
        result = runner.invoke(report_main, [str(tmp_path / "run"), "--out", str(locked / "report")])
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 1 and "without write permission" in result.output, result.output


def test_calibrate_makes_the_folder_of_out_before_scoring(runner, evaluate_split, tmp_path, monkeypatch):
    ckpt = write_test_checkpoint(tmp_path / "run" / "best.pt", evaluate_split)
    out = tmp_path / "missing" / "cal.pt"
    seen = _watch_scoring(monkeypatch, out.parent)
    result = runner.invoke(calibrate_main, ["--checkpoint", str(ckpt), str(evaluate_split), "--out", str(out),
                                            "--no-progress"])
    assert result.exit_code == 0, result.output
    assert seen and all(seen) and out.is_file()


def test_train_given_a_split_folder_suggests_its_parent(runner, evaluate_split, tmp_path):
    train = tmp_path / "features" / "train"
    write_random_shard(train / "shard-00000.h5", 20, FEATURES, seed=0)
    build_index(train)
    result = runner.invoke(train_main, [str(train), str(tmp_path / "run"), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 1
    assert f"is itself a split folder: give its parent, {train.parent}" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_run_folder_below_a_file_before_reading_anything(runner, tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "a-file").write_text("x")
    result = runner.invoke(train_main, [str(tmp_path / "features"), str(tmp_path / "a-file" / "run")])
    assert result.exit_code == 1
    assert f"RUN_DIR {tmp_path / 'a-file' / 'run'}: expected a folder, got a file at {tmp_path / 'a-file'}" in \
        result.output


def test_a_relative_weights_path_that_is_missing_says_where_it_was_looked_for(tmp_path, monkeypatch):
    from avsc_pipeline.models.weights import load_weights_file

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as caught:
        load_weights_file("weights/densenet161_places365.pth.tar")
    assert str(caught.value) == ("weights/densenet161_places365.pth.tar: weights file not found (a relative path, "
                                 f"resolved against the current folder {tmp_path})")
    with pytest.raises(ValueError, match=r"not found$"):  # an absolute path needs no note
        load_weights_file(tmp_path / "nope.pth")


def test_a_relative_init_from_that_is_missing_says_where_it_was_looked_for(tmp_path, monkeypatch):
    from pathlib import Path

    from avsc_pipeline.training.initialize import init_extractors

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as caught:
        init_extractors(None, Path("runs/audio/best.pt"), [], {})
    assert str(caught.value) == ("train.init_from runs/audio/best.pt: checkpoint not found (a relative path, "
                                 f"resolved against the current folder {tmp_path})")
