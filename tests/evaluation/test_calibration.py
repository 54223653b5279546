"""Temperature scaling against a direct search with scikit-learn's log loss."""

import numpy as np
import pytest
from sklearn.metrics import log_loss

from avsc_pipeline.evaluation.calibration import apply_temperature, fit_temperature


def overconfident(n=400, c=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), labels] += 1.0
    logits *= 4.0  # right about 70% of the time, far too sure
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True), labels


def test_the_fitted_temperature_minimizes_sklearns_log_loss():
    probs, labels = overconfident()
    fitted = fit_temperature(probs, labels)
    grid = np.exp(np.linspace(-2, 3, 401))
    losses = [log_loss(labels, apply_temperature(probs, t), labels=range(5)) for t in grid]
    best = grid[int(np.argmin(losses))]
    assert fitted == pytest.approx(best, rel=0.02) and fitted > 1.5  # over-confident: T > 1
    assert log_loss(labels, apply_temperature(probs, fitted), labels=range(5)) < log_loss(labels, probs, labels=range(5))


def test_apply_temperature_keeps_rows_summing_to_one_and_the_ranking():
    probs, _ = overconfident(50)
    for t in (0.5, 1.0, 3.0):
        scaled = apply_temperature(probs, t)
        np.testing.assert_allclose(scaled.sum(1), 1.0, atol=1e-12)
        assert (scaled.argmax(1) == probs.argmax(1)).all()
    with pytest.raises(ValueError, match="temperature > 0"):
        apply_temperature(probs, 0.0)
    with pytest.raises(ValueError, match="labelled rows only"):
        fit_temperature(probs, -np.ones(50, dtype=int))
