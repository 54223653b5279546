"""Figures of a checkpoint selected on the split it is scored on are marked, in metrics.json, the
report and the ablation tables; macro accuracy stands beside the (headline) segment accuracy."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import sklearn.metrics as skm

from avsc_pipeline.ablations import Row, RowResult, write_table
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.evaluation import report
from avsc_pipeline.evaluation.evaluate import SELECTED_ON_SCORED_SPLIT, evaluate_checkpoint
from avsc_pipeline.models.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def selected_on_evaluate(checkpoints, tmp_path_factory):
    """The audio checkpoint as if trained with `train.validation: evaluate`."""
    artifact = load_checkpoint(checkpoints["audio"]).artifact
    train = {**(artifact.config.get("train") or {}), "validation": "evaluate"}
    path = tmp_path_factory.mktemp("runs") / "selected" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, dataclasses.replace(artifact, config={**artifact.config, "train": train}))
    return path


def predictions(folder, metrics_dir):
    with open(metrics_dir / "predictions.tsv", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    probs = np.array([[float(v) for v in row[2:]] for row in rows])
    with ShardDataset(folder, with_video=False) as dataset:
        return np.asarray(dataset.labels), probs.argmax(1)


def test_metrics_json_marks_a_figure_selected_on_the_scored_split(features, checkpoints, selected_on_evaluate,
                                                                   tmp_path):
    marked = evaluate_checkpoint(selected_on_evaluate, features["evaluate"], out_dir=tmp_path / "marked",
                                 device="cpu", progress=False)
    saved = json.loads((tmp_path / "marked" / "metrics.json").read_text())
    assert saved["selected_on"] == ["evaluate"] and saved["selected_on_scored_split"] is True
    assert marked["selected_on_scored_split"] is True
    # The same checkpoint on another split, and a checkpoint selected on its locations: unmarked.
    other = tmp_path / "dev"
    shutil.copytree(features["evaluate"], other)
    assert evaluate_checkpoint(selected_on_evaluate, other, out_dir=tmp_path / "other", device="cpu",
                               progress=False)["selected_on_scored_split"] is False
    plain = evaluate_checkpoint(checkpoints["audio"], features["evaluate"], out_dir=tmp_path / "plain",
                                device="cpu", progress=False)
    assert plain["selected_on"] == ["locations"] and plain["selected_on_scored_split"] is False
    # Macro accuracy (DCASE's class-wise average) beside the segment accuracy.
    labels, predicted = predictions(features["evaluate"], tmp_path / "marked")
    assert saved["class_mean_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, predicted), abs=1e-12)
    assert saved["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted), abs=1e-12)

    # The report: the marked row carries `*`, the footnote says why, the CSV a 0/1 column.
    out = report.write_report([tmp_path / "marked", tmp_path / "plain"], tmp_path / "report")
    assert out.table.splitlines()[1].startswith("marked *") and SELECTED_ON_SCORED_SPLIT in out.table
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| marked * |" in markdown and "| plain |" in markdown and SELECTED_ON_SCORED_SPLIT in markdown
    with open(tmp_path / "report" / "report.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["selected_on_scored_split"] for r in records] == ["1", "0"]
    assert float(records[0]["macro_accuracy_percent"]) == pytest.approx(
        100 * skm.balanced_accuracy_score(labels, predicted), abs=1e-9)


def test_the_ablation_table_marks_rows_selected_on_evaluate(tmp_path):
    row = Row(name="joint", label="FCNN + DenseNet-161", paper=94.2, step="joint", audio_step="plain")
    results = [RowResult(row, accuracy=0.9, log_loss=0.3, status="scored", macro_accuracy=0.88,
                         selected_on_scored_split=True),
               RowResult(dataclasses.replace(row, name="other"), accuracy=0.8, log_loss=0.5, status="scored",
                         macro_accuracy=0.79)]
    write_table(3, results, tmp_path)
    markdown = (tmp_path / "table-3.md").read_text()
    assert "| 90.0 % \\* | 88.0 % |" in markdown and "| 80.0 % | 79.0 % |" in markdown
    assert SELECTED_ON_SCORED_SPLIT in markdown
    with open(tmp_path / "table-3.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [(r["macro_accuracy"], r["selected_on_scored_split"]) for r in records] == [("88.0", "True"),
                                                                                        ("79.0", "False")]


def test_validation_rows_of_a_run_selected_on_another_split_are_refused(selected_on_evaluate):
    from avsc_pipeline.evaluation.ensemble_weights import validation_rows

    artifact = load_checkpoint(selected_on_evaluate).artifact
    with pytest.raises(ValueError, match="selected on the 'evaluate' split"):
        validation_rows(None, [artifact], [selected_on_evaluate])
