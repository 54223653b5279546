"""Run reports on hand-written metrics.json files, and the figures."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from avsc_pipeline.evaluation import plots, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["bus", "park", "tram"]


def _metrics(accuracy, log_loss, per_class_acc, classes=CLASSES, **extra):
    per_class = {
        name: {"accuracy": acc, "log_loss": None if acc is None else 0.5, "n": 0 if acc is None else 10}
        for name, acc in zip(classes, per_class_acc)
    }
    return {"accuracy": accuracy, "log_loss": log_loss, "per_class": per_class, "classes": list(classes), **extra}


def _write(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


@pytest.fixture
def two_runs(tmp_path):
    audio = _write(tmp_path / "runs" / "audio-only" / "eval" / "evaluate", _metrics(0.51, 0.8123, [0.6, 0.42, None]))
    _write(tmp_path / "runs" / "audio-only" / "eval" / "test", _metrics(0.1, 9.0, [0.1, 0.1, 0.1]))
    joint = _write(tmp_path / "joint-eval", _metrics(0.98, 0.0712, [1.0, 0.96, 0.98], log_loss_uncalibrated=0.0931,
                                                     temperature=1.312, ece=0.02))
    return tmp_path / "runs" / "audio-only", joint, audio


def test_find_metrics_forms(two_runs, tmp_path):
    run_dir, joint, audio_eval = two_runs
    assert report.find_metrics(run_dir) == [("audio-only", run_dir / "eval" / "evaluate" / "metrics.json")]
    assert report.find_metrics(audio_eval) == [("audio-only", audio_eval / "metrics.json")]
    assert report.find_metrics(joint / "metrics.json") == [("joint-eval", joint / "metrics.json")]
    only_test = _write(tmp_path / "r2" / "eval" / "test", _metrics(0.5, 1.0, [0.5, 0.5, 0.5]))
    assert report.find_metrics(tmp_path / "r2") == [("r2 (test)", only_test / "metrics.json")]
    with pytest.raises(ValueError, match=r"empty: expected a metrics.json file.*eval/<split>/metrics.json"):
        report.find_metrics(tmp_path / "empty")


def test_colliding_names_use_parent_folders(tmp_path):
    for parent in ("a", "b"):
        _write(tmp_path / parent / "run1" / "eval" / "evaluate", _metrics(0.5, 1.0, [0.5, 0.5, 0.5]))
    rows = report.load_rows([tmp_path / "a" / "run1", tmp_path / "b" / "run1"])
    assert [row.name for row in rows] == ["a/run1", "b/run1"]


def test_format_table(two_runs):
    run_dir, joint, _ = two_runs
    rows = report.load_rows([run_dir, joint])
    assert report.format_table(rows) == (
        "model        accuracy   macro acc.   log loss   uncal. log loss      T\n"
        "audio-only     51.0 %       51.0 %      0.812               n/a    n/a\n"
        "joint-eval     98.0 %       98.0 %      0.071             0.093   1.31"
    )
    wide = report.format_table(rows, CLASSES).splitlines()
    assert wide[0].split() == ["model", "accuracy", "macro", "acc.", "log", "loss", "uncal.", "log", "loss", "T",
                               "bus", "park", "tram"]
    assert wide[1].endswith("60.0 %   42.0 %      n/a")


def test_write_report(two_runs, tmp_path):
    run_dir, joint, _ = two_runs
    out = tmp_path / "out"
    result = report.write_report([run_dir, joint], out)
    assert result.table.splitlines()[1].split() == ["audio-only", "51.0", "%", "51.0", "%", "0.812", "n/a", "n/a"]
    assert set(result.files) == {"report.md", "report.csv", "per_class_accuracy.png"}
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| run | accuracy % | macro acc. % | log loss | uncal. log loss | T | bus | park | tram |" in markdown
    assert "| audio-only | 51.0 | 51.0 | 0.812 | n/a | n/a | 60.0 | 42.0 | n/a |" in markdown
    assert "| joint-eval | 98.0 | 98.0 | 0.071 | 0.093 | 1.31 | 100.0 | 96.0 | 98.0 |" in markdown
    with open(out / "report.csv", newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    assert records[0] == [
        "run", "accuracy_percent", "log_loss", "log_loss_uncalibrated", "temperature", "ece", "ensemble",
        "macro_accuracy_percent", "selected_on_scored_split",
        "bus_accuracy_percent", "park_accuracy_percent", "tram_accuracy_percent", "features_dir"
    ]
    assert records[1][0] == "audio-only" and records[1][3:6] == ["", "", ""] and records[1][11] == ""
    np.testing.assert_allclose([float(v) for v in records[1][1:3] + records[1][6:11]],
                               [51.0, 0.8123, 0, 51.0, 0, 60.0, 42.0])
    np.testing.assert_allclose([float(v) for v in records[2][1:-1]],
                               [98.0, 0.0712, 0.0931, 1.312, 0.02, 0, 98.0, 0, 100.0, 96.0, 98.0])
    assert (out / "per_class_accuracy.png").read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in out.iterdir()) == ["per_class_accuracy.png", "report.csv", "report.md"]


def test_class_list_mismatch_is_refused(two_runs, tmp_path):
    run_dir, _, _ = two_runs
    other = _write(tmp_path / "other-run", _metrics(0.5, 1.0, [0.5, 0.5, 0.5], classes=["bus", "park", "metro"]))
    with pytest.raises(ValueError, match="same class list.*'audio-only'.*'other-run'"):
        report.write_report([run_dir, other], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_malformed_metrics_named(tmp_path):
    bad = _write(tmp_path / "bad", {"accuracy": 0.5})
    with pytest.raises(ValueError, match="metrics.json: expected keys.*missing"):
        report.load_rows([bad])


def test_confusion_matrix_and_curves_plots(tmp_path):
    matrix = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])
    path = plots.plot_confusion_matrix(matrix, CLASSES, tmp_path / "cm.png", title="test")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    header = ",".join(plots.CURVE_COLUMNS)
    rows = ["1,2.0,0.3,1.9,0.35,1.8,0.001,500,0.1", "2,1.5,0.5,,,,0.0005,510,0.05"]
    (tmp_path / "metrics.csv").write_text("\n".join([header] + rows) + "\n", encoding="utf-8")
    png = plots.plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="expected a square"):
        plots.plot_confusion_matrix(matrix[:2], CLASSES, tmp_path / "x.png")


def test_an_ensemble_is_a_row_named_after_its_eval_folder(two_runs, tmp_path):
    run_dir, _, _ = two_runs
    for parent in ("x", "y"):
        _write(tmp_path / parent / "eval" / "evaluate-ensemble",
               _metrics(0.9, 0.2, [0.9, 0.9, 0.9], ensemble=True, log_loss_uncalibrated=0.25, temperature=1.1))
    _write(tmp_path / "mine", _metrics(0.9, 0.2, [0.9, 0.9, 0.9], ensemble=True))
    rows = report.load_rows([run_dir, tmp_path / "x" / "eval" / "evaluate-ensemble",
                             tmp_path / "y" / "eval" / "evaluate-ensemble", tmp_path / "mine"])
    assert [(row.name, row.ensemble) for row in rows] == [
        ("audio-only", False), ("x/eval/evaluate-ensemble", True), ("y/eval/evaluate-ensemble", True),
        ("mine", True)]


def test_reliability_diagram(tmp_path):
    from avsc_pipeline.evaluation import metrics

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3) * 0.3, size=200)
    labels = rng.integers(0, 3, 200)
    curves = {name: {**metrics.reliability_bins(labels, p), "ece": metrics.expected_calibration_error(labels, p)}
              for name, p in (("calibrated", probs), ("uncalibrated", probs ** 2 / (probs ** 2).sum(1, keepdims=True)))}
    path = plots.plot_reliability_diagram(curves, tmp_path / "calibration.png", title="test")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="keys"):
        plots.plot_reliability_diagram({"x": {"count": []}}, tmp_path / "x.png")


def test_the_features_folder_of_each_run_is_named_and_a_difference_warned(tmp_path, caplog):
    features = {"a": str(tmp_path / "data" / "demo-features" / "evaluate"),
                "b": str(tmp_path / "other" / "demo-features" / "evaluate"),
                "c": str(tmp_path / "data" / "big-features" / "evaluate")}
    runs = [_write(tmp_path / "runs" / name / "eval" / "evaluate",
                   _metrics(0.5, 1.0, [0.5, 0.5, 0.5], features_dir=folder, features_config_hash="h1"))
            for name, folder in features.items()]
    # One folder for every run: named, no warning.
    same = [_write(tmp_path / "same" / name / "eval" / "evaluate",
                   _metrics(0.5, 1.0, [0.5, 0.5, 0.5], features_dir=features["a"], features_config_hash="h1"))
            for name in ("x", "y")]
    caplog.set_level("WARNING")
    rows = report.load_rows(same)
    table = report.format_table(rows).splitlines()
    assert table[0].split()[-1] == "features" and table[1].split()[-1] == "demo-features/evaluate"
    assert "not comparable" not in caplog.text and "!" not in "\n".join(table)
    # Three folders, two of which end alike: told apart by a further part, and warned about.
    rows = report.load_rows(runs)
    assert report.features_names(rows) == ["data/demo-features/evaluate", "other/demo-features/evaluate",
                                           "data/big-features/evaluate"]
    assert "not comparable: the runs were scored on different features folders" in caplog.text
    result = report.write_report(runs, tmp_path / "out")
    assert result.table.splitlines()[-1].startswith("! not comparable")
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| T | features | bus |" in markdown and "| other/demo-features/evaluate |" in markdown
    assert "**Warning:** not comparable" in markdown
    with open(tmp_path / "out" / "report.csv", newline="", encoding="utf-8") as handle:
        assert [r[-1] for r in csv.reader(handle)] == ["features_dir"] + list(features.values())
    # One folder, extracted again with another feature config in between.
    rehashed = _write(tmp_path / "runs" / "d" / "eval" / "evaluate",
                      _metrics(0.5, 1.0, [0.5, 0.5, 0.5], features_dir=features["a"], features_config_hash="h2"))
    caplog.clear()
    report.load_rows([runs[0], rehashed])
    assert "scored on features made with different configs" in caplog.text


def test_a_run_without_evaluation_says_run_avsc_eval_first(tmp_path):
    run = tmp_path / "runs" / "joint"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "best.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"joint: a run folder with no evaluation.*run avsc-eval first: "
                                         r"avsc-eval --checkpoint .*best.pt FEATURES/evaluate"):
        report.load_rows([run])
    from click.testing import CliRunner

    from avsc_pipeline_cli.report import main

    result = CliRunner().invoke(main, [str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "run avsc-eval first" in result.output
