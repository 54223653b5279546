"""Temperature scaling against a direct search with scikit-learn's log loss."""

import numpy as np
import pytest
from sklearn.metrics import log_loss

from avsc_pipeline.evaluation.temperature import apply_temperature, fit_temperature


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


# ---- decide_temperature: a temperature only where held-out locations confirm it ----------------

from avsc_pipeline.evaluation.temperature import MIN_ROWS, decide_temperature  # noqa: E402


def calibrated_rows(n, c=5, seed=0, sharpness=2.0):
    """Rows whose labels are drawn from the model's own probabilities: temperature 1 is right."""
    rng = np.random.default_rng(seed)
    logits = sharpness * rng.normal(0, 1, (n, c))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = np.array([rng.choice(c, p=p) for p in probs])
    return probs, labels


def test_a_few_rows_keep_temperature_1_where_their_own_fit_hurts_held_out_rows():
    probs, labels = calibrated_rows(40, seed=3)
    locations = np.repeat(["a", "b", "c", "d"], 10)
    held_probs, held_labels = calibrated_rows(20000, seed=4)
    own = fit_temperature(probs, labels)
    # The 40 rows' own temperature is far from 1 and makes fresh rows of the same model worse.
    assert abs(np.log(own)) > 0.1
    assert (log_loss(held_labels, apply_temperature(held_probs, own), labels=range(5))
            > log_loss(held_labels, held_probs, labels=range(5)))
    decision = decide_temperature(probs, labels, locations)
    assert decision.temperature == 1.0 and not decision.fitted
    assert f"40 labeled validation rows, at least {MIN_ROWS} needed" in decision.reason
    assert decision.to_dict()["reason"] == decision.reason


def test_too_few_locations_keep_temperature_1():
    probs, labels = overconfident(400)
    decision = decide_temperature(probs, labels, np.repeat(["a", "b"], 200))
    assert decision.temperature == 1.0 and "2 validation location(s), at least 3 needed" in decision.reason


def test_locations_that_disagree_keep_temperature_1_with_the_cross_validated_figures():
    # Location a is over-confident (T > 1 helps it), b under-confident (T < 1 helps it), c right
    # at T = 1: a fit on all rows lowers their own log loss, but every location left out is
    # scored with the others' temperature, which is wrong for it.
    a, a_labels = overconfident(200, seed=1)
    b, b_labels = overconfident(200, seed=2)
    c, c_labels = calibrated_rows(200, seed=3)
    probs = np.concatenate([a, apply_temperature(b, 10.0), c])
    labels = np.concatenate([a_labels, b_labels, c_labels])
    locations = np.repeat(["a", "b", "c"], 200)
    assert log_loss(labels, apply_temperature(probs, fit_temperature(probs, labels)), labels=range(5)) < log_loss(
        labels, probs, labels=range(5))
    decision = decide_temperature(probs, labels, locations)
    assert decision.temperature == 1.0 and not decision.fitted and "does not hold on held-out" in decision.reason
    # The cross-validated figures, recomputed with scikit-learn's log loss.
    held = np.empty(len(labels))
    for place in np.unique(locations):
        out = locations == place
        t = fit_temperature(probs[~out], labels[~out])
        held[out] = -np.log(np.clip(apply_temperature(probs[out], t)[np.arange(out.sum()), labels[out]], 1e-15, 1))
    assert decision.cv_log_loss_calibrated == pytest.approx(held.mean(), rel=1e-6)
    assert decision.cv_log_loss_uncalibrated == pytest.approx(log_loss(labels, probs, labels=range(5)), rel=1e-6)
    assert decision.cv_log_loss_calibrated > decision.cv_log_loss_uncalibrated
    assert decision.folds == 3 and decision.folds_improved == 0 and decision.fitted_temperature > 1.5


def test_plenty_of_overconfident_rows_across_locations_get_a_temperature_that_helps_held_out_rows():
    probs, labels = overconfident(800, seed=5)
    locations = np.repeat([f"loc{i}" for i in range(8)], 100)
    decision = decide_temperature(probs, labels, locations)
    assert decision.fitted and decision.temperature > 1.5
    assert decision.temperature == pytest.approx(fit_temperature(probs, labels))
    assert decision.folds == 8 and decision.folds_improved > 4
    assert decision.cv_log_loss_calibrated < decision.cv_log_loss_uncalibrated
    fresh, fresh_labels = overconfident(4000, seed=6)
    assert (log_loss(fresh_labels, apply_temperature(fresh, decision.temperature), labels=range(5))
            < log_loss(fresh_labels, fresh, labels=range(5)))
    # Logits give the same decision; unlabeled rows (-1) are left out.
    logits = np.log(probs) + 7.0
    again = decide_temperature(np.vstack([logits, logits[:5]]), np.concatenate([labels, -np.ones(5, int)]),
                               np.concatenate([locations, ["loc0"] * 5]), logits=True)
    assert again.temperature == pytest.approx(decision.temperature, rel=1e-6) and again.n_rows == 800


def test_decide_temperature_checks_its_inputs():
    probs, labels = overconfident(50)
    with pytest.raises(ValueError, match=r"expected \(N, C\) probabilities, \(N,\) labels and \(N,\) locations"):
        decide_temperature(probs, labels, np.zeros(49))
    with pytest.raises(ValueError, match="expected labels in -1..4, got"):
        decide_temperature(probs, labels + 5, np.zeros(50))


def test_validation_rows_without_mistakes_keep_temperature_1():
    """A model that classifies every validation row correctly gives no evidence about its
    mistakes: the fit would sharpen towards 0 (every held-out location agrees), and one mistake
    on the scored split would cost tens of nats."""
    from avsc_pipeline.evaluation.temperature import MIN_ERRORS

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, 400)
    probs = np.full((400, 5), 0.1)
    probs[np.arange(400), labels] = 0.6  # right every time, under-confident
    locations = np.repeat([f"loc{i}" for i in range(8)], 50)
    assert fit_temperature(probs, labels) < 0.1  # what an unguarded fit would apply
    decision = decide_temperature(probs, labels, locations)
    assert decision.temperature == 1.0 and not decision.fitted
    assert f"0 misclassified validation rows, at least {MIN_ERRORS} needed" in decision.reason
    # A fresh row the model gets wrong, scored with the unguarded temperature, costs far more.
    wrong = np.array([[0.6, 0.1, 0.1, 0.1, 0.1]])
    unguarded = log_loss([1], apply_temperature(wrong, fit_temperature(probs, labels)), labels=range(5))
    assert unguarded > 10 * log_loss([1], wrong, labels=range(5))
