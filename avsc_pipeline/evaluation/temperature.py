"""Temperature scaling: one scalar that divides the logits so that log loss is smallest.

DCASE 2021 Task 1b ranks systems by multi-class log loss, so an over-confident model loses to a
calibrated one of the same accuracy. :func:`fit_temperature` fits the temperature on held-out
rows (a run's validation locations, never the split being scored); :func:`apply_temperature`
rescales probabilities with it. Probabilities stand in for logits: `log p` differs from the
logits by a per-row constant, which the softmax removes.

:func:`decide_temperature` is what training applies by default. A temperature fitted on a few
rows can make held-out log loss worse (T = 0.11 fitted on 40 rows took one user's log loss from
0.704 to 0.835), and the task ranks by log loss, so a temperature is kept only when the
validation rows can support it: at least :data:`MIN_ROWS` rows from :data:`MIN_LOCATIONS`
recording locations with at least :data:`MIN_ERRORS` misclassified rows among them, and an
improvement that holds when each location is left out in turn (fitted on the others, scored on
it). Otherwise the temperature stays 1 and the decision says why.

Why the misclassified rows: what a temperature trades is the loss of confident mistakes against
the gain on confident hits. A model that classifies (nearly) every validation row correctly
gives no evidence about its mistakes, and the fit then drives the temperature towards 0 (every
held-out location agrees, since none holds a mistake either), which one mistake on the scored
split turns into a loss of tens of nats. The demo's joint model did exactly that (T = 0.018 on
validation rows it classified perfectly).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np

logger = logging.getLogger(__name__)

#: The temperature is searched in [exp(-LOG_RANGE), exp(LOG_RANGE)].
LOG_RANGE = 4.0
_FLOOR = 1e-300
#: Fewest distinct recording locations among the validation rows that a temperature is fitted
#: on: with fewer, leaving one out cannot tell a model's miscalibration from one place's quirks.
MIN_LOCATIONS = 3
#: Fewest labeled validation rows (segments) that a temperature is fitted on.
MIN_ROWS = 100
#: Fewest misclassified validation rows that a temperature is fitted on: the evidence of how
#: confident the model's mistakes are.
MIN_ERRORS = 10


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """`softmax(log(probs) / temperature)` row by row, in float64.

    Args:
        probs: `(N, C)` probabilities (rows summing to 1).
        temperature: > 0; 1 returns the probabilities unchanged.

    Returns:
        `(N, C)` float64.
    """
    if not temperature > 0:
        raise ValueError(f"expected a temperature > 0, got {temperature!r}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"expected probabilities of shape (N, C), got {probs.shape}")
    if temperature == 1.0:
        return probs
    scaled = np.log(np.clip(probs, _FLOOR, None)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    out = np.exp(scaled)
    return out / out.sum(axis=1, keepdims=True)


def log_loss_at(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under the rescaled probabilities (clipped as
    scikit-learn's `log_loss` clips them)."""
    scaled = apply_temperature(probs, temperature)
    eps = np.finfo(np.float64).eps
    picked = np.clip(scaled[np.arange(len(labels)), labels], eps, 1 - eps)
    return float(-np.log(picked).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimizes the log loss of `labels` (a bounded search over log T).

    Args:
        probs: `(N, C)` uncalibrated probabilities of held-out rows.
        labels: `(N,)` int class indices (all known).

    Raises:
        ValueError: no rows, unknown labels, or shapes that do not match.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected (N, C) probabilities and (N,) labels with N > 0, got {probs.shape} and "
                         f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError("expected labelled rows only (labels in 0..C-1) to fit a temperature, got unknown labels")
    best = float(np.exp(_golden_section(lambda log_t: log_loss_at(probs, labels, float(np.exp(log_t))),
                                        -LOG_RANGE, LOG_RANGE)))
    # Never worse than leaving the probabilities as they are.
    return best if log_loss_at(probs, labels, best) <= log_loss_at(probs, labels, 1.0) else 1.0


def _golden_section(function, low: float, high: float, tolerance: float = 1e-5) -> float:
    """The minimum of a unimodal function on [low, high] (numpy only: stage two needs no scipy)."""
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = function(c), function(d)
    while b - a > tolerance:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = function(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = function(d)
    return (a + b) / 2.0


@dataclass(frozen=True)
class TemperatureDecision:
    """Which temperature :func:`decide_temperature` chose, and why.

    Attributes:
        temperature: the temperature to apply (1.0 when not fitted).
        fitted: whether a temperature was fitted and kept.
        reason: one sentence saying why, for the log and `metrics.json`.
        n_rows: the labeled rows considered.
        n_locations: their distinct recording locations.
        fitted_temperature: the temperature fitted on every row (kept or not); None when the
            rows were too few to try.
        cv_log_loss_uncalibrated: the leave-one-location-out log loss at temperature 1 (the
            rows' own log loss); None when not cross-validated.
        cv_log_loss_calibrated: the same with each location scored at the temperature fitted on
            the other locations; None when not cross-validated.
        folds: locations left out in turn (0 when not cross-validated).
        folds_improved: folds whose held-out log loss the temperature lowered.
    """

    temperature: float
    fitted: bool
    reason: str
    n_rows: int
    n_locations: int
    fitted_temperature: Optional[float] = None
    cv_log_loss_uncalibrated: Optional[float] = None
    cv_log_loss_calibrated: Optional[float] = None
    folds: int = 0
    folds_improved: int = 0

    def to_dict(self) -> Dict[str, Any]:
        """A JSON- and checkpoint-ready dict (plain floats, ints, bools, str and None)."""
        return asdict(self)


def decide_temperature(probs: np.ndarray, labels: np.ndarray, locations: np.ndarray, *, logits: bool = False,
                       min_rows: int = MIN_ROWS, min_locations: int = MIN_LOCATIONS,
                       min_errors: int = MIN_ERRORS) -> TemperatureDecision:
    """Fit a temperature only when the validation rows support it (see the module docstring).

    The check: each of the K locations is left out in turn, a temperature fitted on the other
    locations' rows and the left-out rows scored with it. The temperature (then fitted on every
    row) is kept when the pooled held-out log loss is lower than at temperature 1 and the
    held-out log loss improves for more than half of the locations; otherwise it stays 1.

    Args:
        probs: `(N, C)` uncalibrated probabilities of the validation rows (or logits, with
            `logits=True`).
        labels: `(N,)` int class indices; rows labeled -1 (unknown) are left out.
        locations: `(N,)` recording location (identifier) of each row.
        logits: `probs` holds logits (turned into probabilities by a softmax).
        min_rows: fewest labeled rows to fit on (:data:`MIN_ROWS`).
        min_locations: fewest distinct locations to fit on (:data:`MIN_LOCATIONS`).
        min_errors: fewest misclassified rows to fit on (:data:`MIN_ERRORS`).

    Returns:
        The :class:`TemperatureDecision`.

    Raises:
        ValueError: shapes that do not match, or labels outside 0..C-1 other than -1.
    """
    probs, labels, locations = _checked_rows(probs, labels, locations, logits)
    known = labels >= 0
    probs, labels, locations = probs[known], labels[known], locations[known]
    places = np.unique(locations)
    n_rows, n_locations = int(len(labels)), int(len(places))
    n_errors = int((probs.argmax(axis=1) != labels).sum())
    if n_rows < min_rows or n_locations < min_locations or n_errors < min_errors:
        why = (f"{n_rows} labeled validation rows, at least {min_rows} needed" if n_rows < min_rows
               else f"{n_locations} validation location(s), at least {min_locations} needed"
               if n_locations < min_locations
               else f"{n_errors} misclassified validation rows, at least {min_errors} needed to tell how confident "
                    "its mistakes are")
        return TemperatureDecision(1.0, False, f"temperature 1 kept: {why} to fit one", n_rows, n_locations)
    logger.info("fitting the calibration temperature on %d rows of %d locations, each location left out in "
                "turn...", n_rows, n_locations)
    fitted = fit_temperature(probs, labels)
    held_out, uncalibrated, improved = 0.0, 0.0, 0
    for place in places:
        out = locations == place
        temperature = fit_temperature(probs[~out], labels[~out])
        loss_t, loss_1 = (_row_losses(probs[out], labels[out], t).sum() for t in (temperature, 1.0))
        held_out, uncalibrated, improved = held_out + loss_t, uncalibrated + loss_1, improved + int(loss_t < loss_1)
    cv_t, cv_1 = float(held_out / n_rows), float(uncalibrated / n_rows)
    keep = fitted != 1.0 and cv_t < cv_1 and 2 * improved > n_locations
    figures = (f"leave-one-location-out log loss {cv_1:.4f} -> {cv_t:.4f}, lower for {improved} of "
               f"{n_locations} held-out locations")
    reason = (f"temperature {fitted:.3g} fitted on {n_rows} rows of {n_locations} locations: {figures}" if keep
              else f"temperature 1 kept (a fit on all rows gives {fitted:.3g}, which does not hold on held-out "
                   f"locations: {figures})")
    return TemperatureDecision(fitted if keep else 1.0, keep, reason, n_rows, n_locations, float(fitted), cv_1, cv_t,
                               n_locations, improved)


def _checked_rows(probs: Any, labels: Any, locations: Any, logits: bool) -> tuple:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    locations = np.asarray(locations).reshape(-1)
    if probs.ndim != 2 or len(probs) != len(labels) or len(locations) != len(labels):
        raise ValueError(f"expected (N, C) probabilities, (N,) labels and (N,) locations, got {probs.shape}, "
                         f"{labels.shape} and {locations.shape}")
    if len(labels) and (labels.min() < -1 or labels.max() >= probs.shape[1]):
        raise ValueError(f"expected labels in -1..{probs.shape[1] - 1}, got {labels.min()}..{labels.max()}")
    if logits:
        shifted = np.exp(probs - probs.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
    return probs, labels, locations


def _row_losses(probs: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
    """`(N,)` negative log-likelihoods at `temperature`, clipped as :func:`log_loss_at` clips."""
    scaled = apply_temperature(probs, temperature)
    eps = np.finfo(np.float64).eps
    return -np.log(np.clip(scaled[np.arange(len(labels)), labels], eps, 1 - eps))
