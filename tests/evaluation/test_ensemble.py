"""Ensembles of checkpoints: against each member's own predictions.tsv, the mean worked out here
in numpy, scikit-learn's log loss; refusals; one read of the inputs per batch."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
from sklearn import metrics as skm

from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.evaluation.ensemble import (Ensemble, EnsembleSpec, normalized_weights, parse_weights,
                                               read_ensemble_file, write_ensemble_file)
from avsc_pipeline.evaluation.loading import load_model
from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint, evaluate_model
from avsc_pipeline.evaluation.output_file import read_predictions
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import write_random_shard, write_test_checkpoint

FEATURES = FeatureConfig(image_size=32)
C = 10


def with_temperature(path, temperature):
    artifact = load_checkpoint(path).artifact
    save_checkpoint(path, dataclasses.replace(artifact, temperature=temperature))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Random labeled shards (20 rows, 2 clips) and three checkpoints in run folders: a joint
    model with temperature 1.7, an audio model, another joint model."""
    root = tmp_path_factory.mktemp("ensemble")
    split = root / "features" / "evaluate"
    write_random_shard(split / "shard-00000.h5", 20, FEATURES, seed=0)
    build_index(split)
    runs = root / "runs"
    ckpts = {
        "joint": with_temperature(write_test_checkpoint(runs / "joint" / "best.pt", split, seed=1), 1.7),
        "audio": write_test_checkpoint(runs / "audio" / "best.pt", split, modality="audio", seed=2),
        "other": write_test_checkpoint(runs / "other" / "best.pt", split, seed=3),
    }
    own = {}
    for name, ckpt in ckpts.items():
        evaluate_checkpoint(ckpt, split, progress=False)
        own[name] = read_predictions(ckpt.parent / "eval" / "evaluate" / "predictions.tsv")[2]
    return root, split, ckpts, own


def test_an_ensemble_of_a_checkpoint_with_itself_equals_it(setup, tmp_path):
    _, split, ckpts, own = setup
    result = evaluate_model([ckpts["joint"]] * 2, split, out_dir=tmp_path, progress=False)
    np.testing.assert_allclose(read_predictions(tmp_path / "predictions.tsv")[2], own["joint"], rtol=0, atol=1e-6)
    alone = json.loads((ckpts["joint"].parent / "eval" / "evaluate" / "metrics.json").read_text())
    assert result["ensemble"] and not alone["ensemble"]
    for key in ("log_loss", "log_loss_uncalibrated", "ece", "clip_log_loss"):
        assert result[key] == pytest.approx(alone[key], abs=1e-6)


def test_an_ensemble_is_the_weighted_mean_of_its_members_predictions(setup):
    _, split, ckpts, own = setup
    result = evaluate_model([ckpts["joint"], ckpts["audio"]], split, weights=[3, 1], progress=False)
    out = ckpts["joint"].parent / "eval" / "evaluate-ensemble"
    probs = read_predictions(out / "predictions.tsv")[2]
    expected = 0.75 * own["joint"] + 0.25 * own["audio"]
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    with h5py.File(split / "shard-00000.h5", "r") as handle:
        labels = handle["label"][()].astype(np.int64)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["log_loss"] == pytest.approx(skm.log_loss(labels, expected, labels=range(C)), abs=1e-6)
    assert [(m["run"], m["weight"], m["temperature"]) for m in saved["members"]] == [
        ("joint", 0.75, 1.7), ("audio", 0.25, 1.0)]
    assert saved["mean"] == "arithmetic" and saved["ensemble"] is True and saved["temperature"] == 1.0
    assert result["files"]["calibration.png"].is_file()


@pytest.mark.slow
def test_a_geometric_ensemble_against_a_hand_computation(setup, tmp_path):
    _, split, ckpts, own = setup
    evaluate_model([ckpts["joint"], ckpts["other"]], split, out_dir=tmp_path, weights=[0.2, 0.8], mean="geometric",
                   progress=False)
    probs = read_predictions(tmp_path / "predictions.tsv")[2]
    hand = own["joint"] ** 0.2 * own["other"] ** 0.8
    np.testing.assert_allclose(probs, hand / hand.sum(axis=1, keepdims=True), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_ensembles_own_temperature_and_its_file(setup, tmp_path):
    _, split, ckpts, own = setup
    spec = EnsembleSpec((str(ckpts["joint"]), str(ckpts["audio"])), (0.5, 0.5), "arithmetic", 2.5, (1.7, 1.0))
    path = write_ensemble_file(tmp_path / "ens.yaml", spec)
    assert "../" in path.read_text()  # members relative to the file's folder
    assert read_ensemble_file(path).checkpoints == (str(ckpts["joint"].resolve()), str(ckpts["audio"].resolve()))
    with pytest.raises(FileExistsError, match="never overwrites"):
        write_ensemble_file(path, spec)
    result = evaluate_model([path], split, progress=False)
    out = tmp_path / "eval" / "evaluate-ens"
    probs = read_predictions(out / "predictions.tsv")[2]
    scaled = np.log(0.5 * own["joint"] + 0.5 * own["audio"]) / 2.5
    expected = np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert result["temperature"] == 2.5 and result["checkpoint"] == str(path.resolve())
    with pytest.raises(ValueError, match="--weights: .*ens.yaml fixes its members' weights"):
        load_model([path], "cpu", weights=[1, 1])
    with pytest.raises(ValueError, match="stands alone"):
        load_model([path, ckpts["joint"]], "cpu")


def test_no_calibration_gives_the_uncalibrated_probabilities(setup, tmp_path):
    _, split, ckpts, own = setup
    result = evaluate_checkpoint(ckpts["joint"], split, calibrated=False, progress=False)
    out = ckpts["joint"].parent / "eval" / "evaluate-uncalibrated"
    raw = read_predictions(out / "predictions.tsv")[2]
    # The calibrated probabilities are the raw ones at temperature 1.7.
    scaled = np.log(raw) / 1.7
    np.testing.assert_allclose(np.exp(scaled) / np.exp(scaled).sum(1, keepdims=True), own["joint"], atol=1e-9)
    calibrated = json.loads((ckpts["joint"].parent / "eval" / "evaluate" / "metrics.json").read_text())
    assert calibrated["log_loss_uncalibrated"] == pytest.approx(result["log_loss"], abs=1e-9)
    assert result["log_loss_uncalibrated"] == pytest.approx(result["log_loss"], abs=1e-12)
    assert (result["calibrated"], result["temperature"], calibrated["temperature"]) == (False, 1.0, 1.7)


def test_mismatched_checkpoints_are_refused_naming_both_files_and_the_fields(setup, tmp_path):
    root, _, ckpts, _ = setup
    artifact = load_checkpoint(ckpts["other"]).artifact
    config = {**artifact.config, "features": {**artifact.config["features"], "fmax": 12000.0}}
    other_features = tmp_path / "features.pt"
    save_checkpoint(other_features, dataclasses.replace(artifact, config=config))
    with pytest.raises(ValueError) as err:
        load_model([ckpts["joint"], other_features], "cpu")
    message = str(err.value)
    assert str(ckpts["joint"]) in message and str(other_features) in message
    assert "features.fmax: 24000.0 != 12000.0" in message and "\n" not in message
    other_classes = tmp_path / "classes.pt"
    save_checkpoint(other_classes, dataclasses.replace(artifact, classes=list(reversed(artifact.classes))))
    with pytest.raises(ValueError, match=r"joint/best.pt and .*classes.pt: expected the same class list.*classes\[0\]"):
        load_model([ckpts["joint"], other_classes], "cpu")


def test_weights(setup):
    _, _, ckpts, _ = setup
    assert normalized_weights(None, 4) == (0.25,) * 4
    assert normalized_weights(parse_weights("2,6"), 2) == (0.25, 0.75)
    with pytest.raises(ValueError, match=r"--weights: expected 3 weights, one per checkpoint, got 2 \(0.5,0.5\)"):
        load_model([ckpts["joint"]] * 3, "cpu", weights=parse_weights("0.5,0.5"))
    for bad in ("-1,2", "0,0"):
        with pytest.raises(ValueError, match="--weights: expected non-negative weights"):
            normalized_weights(parse_weights(bad), 2)
    with pytest.raises(ValueError, match="--weights: expected comma-separated numbers"):
        parse_weights("half,half")
    with pytest.raises(ValueError, match="--mean"):
        Ensemble(load_model([ckpts["joint"]], "cpu").members, ["a"], mean="median")


def test_frames_are_read_once_per_batch_for_the_whole_ensemble(setup, tmp_path, monkeypatch):
    _, split, ckpts, _ = setup
    reads = []
    original = ShardDataset.read_batch

    def counting(self, indices, *args, **kwargs):
        reads.append((len(indices), self.with_video))
        return original(self, indices, *args, **kwargs)

    monkeypatch.setattr(ShardDataset, "read_batch", counting)
    evaluate_model([ckpts["audio"], ckpts["joint"], ckpts["other"]], split, out_dir=tmp_path, batch_size=8,
                   progress=False)
    assert reads == [(8, True), (8, True), (4, True)]  # 20 rows, one read of each batch
