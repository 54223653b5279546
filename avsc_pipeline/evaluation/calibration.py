"""Temperature scaling: one scalar that divides the logits so that log loss is smallest.

DCASE 2021 Task 1b ranks systems by multi-class log loss, so an over-confident model loses to a
calibrated one of the same accuracy. :func:`fit_temperature` fits the temperature on held-out
rows (a run's validation locations, never the split being scored); :func:`apply_temperature`
rescales probabilities with it. Probabilities stand in for logits: `log p` differs from the
logits by a per-row constant, which the softmax removes.
"""

from __future__ import annotations

import numpy as np

#: The temperature is searched in [exp(-LOG_RANGE), exp(LOG_RANGE)].
LOG_RANGE = 4.0
_FLOOR = 1e-300


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
