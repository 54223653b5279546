"""Ensemble weights fitted on validation rows: against hand computations, scipy's constrained
minimizer and scikit-learn's log loss; the warning when an ensemble is worse than its best member."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.metrics import log_loss

from avsc_pipeline.dataio.samplers import location_split
from avsc_pipeline.evaluation.temperature import apply_temperature
from avsc_pipeline.evaluation.ensemble_weights import check_ensemble, combine, fit_weights, parse_weights_option
from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint
from avsc_pipeline.evaluation.output_file import read_predictions
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.testing import write_random_folder, write_test_checkpoint

FEATURES = FeatureConfig(image_size=32)


def two_members(true_a, true_b):
    """Two-class rows labeled 0 whose members give the true class `true_a[n]` and `true_b[n]`."""
    a = np.stack([true_a, 1 - np.asarray(true_a)], axis=1)
    b = np.stack([true_b, 1 - np.asarray(true_b)], axis=1)
    return np.stack([a, b]), np.zeros(len(true_a), dtype=int)


def test_arithmetic_weights_match_the_hand_computation():
    # loss(w) = -(2 log(0.2 + 0.6 w) + log(0.8 - 0.6 w)) / 3, zero derivative at w = 7/9.
    probs, labels = two_members([0.8, 0.8, 0.2], [0.2, 0.2, 0.8])
    w = fit_weights(probs, labels)
    assert w == pytest.approx([7 / 9, 2 / 9], abs=1e-4)
    expected = -(2 * np.log(0.2 + 0.6 * 7 / 9) + np.log(0.8 - 0.6 * 7 / 9)) / 3
    assert log_loss(labels, combine(probs, w), labels=[0, 1]) == pytest.approx(expected, abs=1e-8)


def test_geometric_weights_with_a_uniform_member_are_a_temperature():
    # softmax(w log u + (1 - w) log p) with u uniform is p at temperature 1 / (1 - w): the best
    # w is 1 - 1 / T*, T* the temperature minimizing scikit-learn's log loss (found on a grid).
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 600)
    logits = rng.normal(0, 1, (600, 4))
    logits[np.arange(600), labels] += 1.0
    sharp = np.exp(4 * logits - (4 * logits).max(1, keepdims=True))
    sharp /= sharp.sum(1, keepdims=True)
    probs = np.stack([np.full_like(sharp, 0.25), sharp])
    grid = np.exp(np.linspace(0, 2.5, 2001))
    best_t = grid[np.argmin([log_loss(labels, apply_temperature(sharp, t), labels=range(4)) for t in grid])]
    w = fit_weights(probs, labels, mean="geometric")
    assert w[0] == pytest.approx(1 - 1 / best_t, abs=2e-3)


@pytest.mark.parametrize("mean", ["arithmetic", "geometric"])
def test_three_members_match_scipys_constrained_minimum(mean):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 300)
    members = []
    for strength in (0.5, 1.5, 3.0):
        logits = rng.normal(0, 1, (300, 5))
        logits[np.arange(300), labels] += strength
        p = np.exp(2 * logits)
        members.append(p / p.sum(1, keepdims=True))
    probs = np.stack(members)
    w = fit_weights(probs, labels, mean=mean)

    def objective(v):
        return log_loss(labels, combine(probs, np.clip(v, 0, None) / np.clip(v, 0, None).sum(), mean), labels=range(5))

    reference = minimize(objective, np.full(3, 1 / 3), method="SLSQP", bounds=[(0, 1)] * 3,
                         constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}], options={"ftol": 1e-12})
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert objective(w) <= reference.fun + 1e-6
    np.testing.assert_allclose(w, reference.x, atol=5e-3)


def test_a_dominant_member_takes_all_the_weight():
    probs, labels = two_members([0.9, 0.9, 0.9], [0.1, 0.3, 0.2])
    np.testing.assert_allclose(fit_weights(probs, labels), [1.0, 0.0], atol=1e-12)


def test_fit_weights_and_the_option_check_their_inputs():
    probs, labels = two_members([0.8, 0.2], [0.2, 0.8])
    with pytest.raises(ValueError, match=r"expected \(M, N, C\) member probabilities"):
        fit_weights(probs[:, :1], labels)
    with pytest.raises(ValueError, match="expected labels in 0..1"):
        fit_weights(probs, labels + 2)
    with pytest.raises(ValueError, match="expected mean in"):
        fit_weights(probs, labels, mean="median")
    assert parse_weights_option(" Auto ") == (True, None)
    assert parse_weights_option("1,3") == (False, (1.0, 3.0))
    assert parse_weights_option(None) == (False, None)
    with pytest.raises(ValueError, match="--weights: expected comma-separated numbers"):
        parse_weights_option("best")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A training split (200 random rows, 2 locations per class: 10 held out, 100 validation
    rows), an evaluate split, and two untrained checkpoints for them."""
    root = tmp_path_factory.mktemp("weights")
    features = root / "features"
    write_random_folder(features / "train", (200,), FEATURES)
    write_random_folder(features / "evaluate", (40,), FEATURES)
    ckpts = [write_test_checkpoint(root / "runs" / name / "best.pt", features / "train", modality=modality, seed=seed)
             for name, modality, seed in (("joint", "joint", 1), ("audio", "audio", 2))]
    return features, ckpts


def member_validation_probs(features, ckpts):
    """Each member's probabilities of the validation rows, from its own avsc-eval of the whole
    training split, and their labels; the rows from the held-out locations."""
    from avsc_pipeline.dataio.dataset import ShardDataset

    with ShardDataset([features / "train"], with_video=False) as dataset:
        identifiers, labels = np.asarray(dataset.identifiers), np.asarray(dataset.labels)
    rows = np.flatnonzero(np.isin(identifiers, location_split(identifiers, labels, 0.1, 0)))
    probs = []
    for ckpt in ckpts:
        evaluate_checkpoint(ckpt, features / "train", out_dir=ckpt.parent / "eval-train", progress=False)
        probs.append(read_predictions(ckpt.parent / "eval-train" / "predictions.tsv")[2][rows])
    return np.stack(probs), labels[rows]


def test_check_ensemble_scores_the_members_validation_rows(runs):
    features, ckpts = runs
    probs, labels = member_validation_probs(features, ckpts)
    assert len(labels) == 100
    check = check_ensemble(ckpts, features / "train", fit=True, device="cpu")
    assert check.n_rows == 100 and check.n_locations == 10 and check.fitted
    for member, loss in zip(probs, check.member_log_loss):
        assert loss == pytest.approx(log_loss(labels, member, labels=range(10)), abs=1e-4)
    expected = log_loss(labels, np.tensordot(check.weights, probs, axes=1), labels=range(10))
    assert check.ensemble_log_loss == pytest.approx(expected, abs=1e-4)
    assert check.ensemble_log_loss <= min(check.member_log_loss) + 1e-9 and check.warning is None
    np.testing.assert_allclose(check.weights, fit_weights(probs, labels), atol=1e-3)


def test_an_ensemble_worse_than_its_best_member_is_warned_about(runs, caplog):
    features, ckpts = runs
    checks = [check_ensemble(ckpts, features / "train", weights=w, device="cpu") for w in ((1, 0), (0, 1))]
    worse = max(checks, key=lambda c: c.ensemble_log_loss)
    assert worse.warning is not None and "worse than its best member's" in worse.warning
    assert "--weights auto fits the weights" in worse.warning and worse.warning in caplog.text
    assert worse.to_dict()["warning"] == worse.warning


def test_avsc_eval_weights_auto_records_the_fitted_weights_in_metrics_json(runs, tmp_path):
    from click.testing import CliRunner

    from avsc_pipeline_cli.eval import main

    features, ckpts = runs
    args = [a for c in ckpts for a in ("--checkpoint", str(c))]
    out = tmp_path / "ensemble"
    result = CliRunner().invoke(main, args + [str(features / "evaluate"), "--out", str(out), "--weights", "auto",
                                              "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    check = metrics["ensemble_validation"]
    assert check["fitted"] and check["n_rows"] == 100 and check["warning"] is None
    assert [m["weight"] for m in metrics["members"]] == pytest.approx(check["weights"])
    assert metrics["features_dir"] == str((features / "evaluate").resolve())
    assert check["split_dir"] == str((features / "train").resolve())
    assert "validation (100 rows of 10 locations, fitted weights)" in result.output
    alone = CliRunner().invoke(main, ["--checkpoint", str(ckpts[0]), str(features / "evaluate"), "--weights", "auto",
                                      "--out", str(tmp_path / "one"), "--device", "cpu", "--no-progress"])
    assert alone.exit_code != 0 and "--weights auto: expected several --checkpoint values" in alone.output
    missing = CliRunner().invoke(main, args + [str(features / "evaluate"), "--weights", "auto", "--out",
                                               str(tmp_path / "x"), "--validation-split", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "nowhere" in missing.output
