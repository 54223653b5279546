"""Segment scores against scikit-learn, on hand-made arrays with edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from avsc_pipeline.evaluation import metrics

CLASSES = ["airport", "bus", "metro", "park"]

# Class 3 ("park") never occurs in the labels; class 2 ("metro") is never predicted.
# Rows hold exact 0 and 1, including a confident wrong answer (row 3).
LABELS = np.array([0, 0, 1, 2, 2, 1, 0, 2])
PROBS = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.7, 0.2, 0.1, 0.0],
        [0.1, 0.6, 0.2, 0.1],
        [0.0, 1.0, 0.0, 0.0],
        [0.25, 0.25, 0.2, 0.3],
        [0.3, 0.3, 0.1, 0.3],
        [0.0, 0.0, 0.0, 1.0],
        [0.4, 0.1, 0.35, 0.15],
    ]
)


def _sk_log_loss(labels, probs):
    return skm.log_loss(labels, probs, labels=list(range(probs.shape[1])))


def _random_case(rng, n, c, dtype):
    logits = rng.normal(scale=3.0, size=(n, c))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(dtype)
    return rng.integers(0, c, size=n), probs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_loss_matches_sklearn_with_zero_and_one(dtype):
    probs = PROBS.astype(dtype)
    ours = metrics.log_loss(LABELS, probs, num_classes=4)
    assert abs(ours - _sk_log_loss(LABELS, probs)) <= 1e-12
    # The confident wrong row must cost -log(eps) of the dtype, not inf or 0.
    assert ours > -np.log(np.finfo(dtype).eps) / len(LABELS)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_loss_matches_sklearn_on_softmax_outputs(dtype):
    labels, probs = _random_case(np.random.default_rng(0), 997, 10, dtype)
    assert abs(metrics.log_loss(labels, probs) - _sk_log_loss(labels, probs)) <= 1e-12


def test_clip_probabilities_bounds_and_dtype():
    for dtype in (np.float32, np.float64):
        clipped = metrics.clip_probabilities(PROBS.astype(dtype))
        eps = np.finfo(dtype).eps
        assert clipped.dtype == dtype
        assert clipped.min() == dtype(eps) and clipped.max() == dtype(1) - dtype(eps)
    assert metrics.clip_probabilities(PROBS, eps=0.01).min() == 0.01


def test_unnormalised_rows_warn_and_still_match_sklearn():
    probs = PROBS * 0.5
    with pytest.warns(UserWarning, match="summing to 1"):
        ours = metrics.log_loss(LABELS, probs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _sk_log_loss(LABELS, probs)
    assert abs(ours - expected) <= 1e-12


def test_accuracy_and_confusion_matrix_match_sklearn():
    predicted = metrics.predict(PROBS)
    np.testing.assert_array_equal(predicted, np.argmax(PROBS, axis=1))
    assert 2 not in predicted and 3 not in LABELS
    assert metrics.accuracy(LABELS, predicted, 4) == skm.accuracy_score(LABELS, predicted)
    matrix = metrics.confusion_matrix(LABELS, predicted, 4)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, skm.confusion_matrix(LABELS, predicted, labels=range(4)))


def test_per_class_scores_match_sklearn_on_subsets():
    predicted = metrics.predict(PROBS)
    acc = metrics.per_class_accuracy(LABELS, predicted, 4)
    loss = metrics.per_class_log_loss(LABELS, PROBS, 4)
    present = [0, 1, 2]
    np.testing.assert_allclose(
        acc[present], skm.recall_score(LABELS, predicted, labels=present, average=None), rtol=0, atol=1e-15
    )
    for index in present:
        mask = LABELS == index
        assert abs(loss[index] - _sk_log_loss(LABELS[mask], PROBS[mask])) <= 1e-12
    assert np.isnan(acc[3]) and np.isnan(loss[3])
    assert metrics.class_mean(acc) == pytest.approx(np.mean(acc[present]), abs=1e-15)


def test_score_dict():
    result = metrics.score(LABELS, PROBS, CLASSES)
    predicted = np.argmax(PROBS, axis=1)
    assert set(result) == {
        "accuracy",
        "log_loss",
        "per_class",
        "class_mean_accuracy",
        "class_mean_log_loss",
        "confusion_matrix",
        "classes",
        "n_segments",
    }
    assert result["accuracy"] == skm.accuracy_score(LABELS, predicted)
    assert abs(result["log_loss"] - _sk_log_loss(LABELS, PROBS)) <= 1e-12
    assert result["confusion_matrix"] == skm.confusion_matrix(LABELS, predicted, labels=range(4)).tolist()
    assert result["classes"] == CLASSES and result["n_segments"] == 8
    assert result["per_class"]["park"] == {"accuracy": None, "log_loss": None, "n": 0}
    assert result["per_class"]["airport"]["n"] == 3
    sk_recall = skm.recall_score(LABELS, predicted, labels=[0, 1, 2], average=None)
    assert result["class_mean_accuracy"] == pytest.approx(np.mean(sk_recall), abs=1e-15)
    sk_losses = [_sk_log_loss(LABELS[LABELS == i], PROBS[LABELS == i]) for i in range(3)]
    assert result["class_mean_log_loss"] == pytest.approx(np.mean(sk_losses), abs=1e-12)


@pytest.mark.parametrize(
    "labels, probs, classes, error, match",
    [
        (LABELS[:-1], PROBS, CLASSES, ValueError, "expected as many labels"),
        (LABELS, PROBS, CLASSES[:3], ValueError, "expected probabilities with 3 columns"),
        (np.where(LABELS == 1, -1, LABELS), PROBS, CLASSES, ValueError, "unknown labels"),
        (np.where(LABELS == 1, 4, LABELS), PROBS, CLASSES, ValueError, r"expected labels in \[0, 3\]"),
        (LABELS.astype(float), PROBS, CLASSES, TypeError, "expected integer"),
        (LABELS, np.where(PROBS == 1.0, np.nan, PROBS), CLASSES, ValueError, "expected finite"),
        (LABELS, PROBS * 2, CLASSES, ValueError, r"expected probabilities in \[0, 1\]"),
        (LABELS, PROBS[:, 0], CLASSES, ValueError, r"expected probabilities of shape \(N, C\)"),
        (LABELS[:0], PROBS[:0], CLASSES, ValueError, "at least one segment"),
    ],
)
def test_score_rejects_bad_input(labels, probs, classes, error, match):
    with pytest.raises(error, match=match):
        metrics.score(labels, probs, classes)


def test_aggregate_clips_by_hand():
    ids = np.array(["b", "a", "b", "c", "a"])
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.7, 0.3]], dtype=np.float32)
    labels = np.array([1, 0, 1, -1, 0])
    names, clip_probs, clip_labels = metrics.aggregate_clips(ids, probs, labels)
    assert names == ["b", "a", "c"]
    np.testing.assert_allclose(clip_probs, [[0.4, 0.6], [0.8, 0.2], [0.5, 0.5]], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(clip_labels, [1, 0, -1])
    names, _, none = metrics.aggregate_clips(ids, probs)
    assert none is None and names == ["b", "a", "c"]


def test_aggregate_clips_refuses_disagreeing_labels():
    ids = ["x", "y", "y"]
    probs = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="'y'"):
        metrics.aggregate_clips(ids, probs, np.array([0, 1, 0]))


def test_mean_log_prob_pooling_against_numpy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=7)
    probs[2, 1] = 0.0  # a class one segment rules out stays finite in the log
    ids = np.array(["a", "b", "a", "a", "b", "c", "b"])
    names, pooled, _ = metrics.aggregate_clips(ids, probs, pool="mean-log-prob")
    assert names == ["a", "b", "c"]
    for name, row in zip(names, pooled):
        logs = np.log(np.maximum(probs[ids == name], np.finfo(np.float64).tiny)).mean(axis=0)
        expected = np.exp(logs) / np.exp(logs).sum()
        np.testing.assert_allclose(row, expected, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(metrics.pool_segments(probs[ids == name], "mean-log-prob"), expected, rtol=1e-12)
        np.testing.assert_allclose(metrics.pool_segments(probs[ids == name]), probs[ids == name].mean(axis=0))
    assert pooled[0, 1] < 1e-100  # ruled out by segment 2
    with pytest.raises(ValueError, match="clip pool in"):
        metrics.aggregate_clips(ids, probs, pool="median")


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.1], [0.85, 0.15], [0.7, 0.3], [0.35, 0.65], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0, 0])
    # Five bins: (0.8, 1] holds rows 0, 1 (accuracy 1/2, confidence 0.875); (0.6, 0.8] rows
    # 2, 3 (1/2, 0.675); (0.4, 0.6] row 4 (1, 0.55).
    hand = 2 / 5 * abs(0.5 - 0.875) + 2 / 5 * abs(0.5 - 0.675) + 1 / 5 * abs(1.0 - 0.55)
    assert metrics.expected_calibration_error(labels, probs, bins=5) == pytest.approx(hand, abs=1e-12)
    table = metrics.reliability_bins(labels, probs, bins=5)
    np.testing.assert_array_equal(table["count"], [0, 0, 1, 2, 2])
    np.testing.assert_allclose(table["accuracy"][2:], [1.0, 0.5, 0.5])
    assert np.isnan(table["confidence"][0])
    perfect = np.eye(2)[[0, 1, 1]]
    assert metrics.expected_calibration_error(np.array([0, 1, 1]), perfect) == 0.0
    with pytest.raises(ValueError, match="bins to be an int >= 1"):
        metrics.reliability_bins(labels, probs, bins=0)
