"""Scores for scene classification, from numpy arrays of labels and class probabilities.

DCASE 2021 Task 1b ranks systems by the multi-class log loss (cross-entropy) over the
evaluation segments; accuracy is the secondary metric. Both are computed here for one-second
segments; :func:`aggregate_clips` pools segment probabilities into clip scores first when a
clip-level figure is wanted (mean probability, or mean log-probability: :data:`CLIP_POOLS`).
:func:`expected_calibration_error` and :func:`reliability_bins` say how far confidence is from
accuracy (a reliability diagram's data).

Log loss follows scikit-learn's `sklearn.metrics.log_loss(y, p, labels=range(C))` (checked
against scikit-learn 1.9): probabilities are clipped to `[eps, 1 - eps]` with `eps` the machine
epsilon of their dtype, rows are *not* renormalised (a row that does not sum to one only warns),
and the loss is computed in the probabilities' own floating dtype, so float32 and float64 inputs
give the same numbers as scikit-learn's. Labels here are class indices `0 .. C-1`; segments of
unknown class (label -1) must be dropped by the caller before scoring.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

_KEPT_FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16))
#: How a clip's segment probabilities become the clip's (:func:`pool_segments`).
CLIP_POOLS = ("mean-prob", "mean-log-prob")
#: How an ensemble's members' probabilities are averaged (:class:`~.ensemble.Ensemble`): the
#: arithmetic mean of probabilities, or the geometric one (the mean of log-probabilities,
#: renormalized), the same two choices as :data:`CLIP_POOLS` makes over segments.
ENSEMBLE_MEANS = ("arithmetic", "geometric")
#: Equal-width confidence bins of :func:`reliability_bins` and :func:`expected_calibration_error`.
ECE_BINS = 15


def _as_probabilities(probs: Any) -> np.ndarray:
    """`probs` as a 2-D float array, keeping float16/32/64 and turning other numbers into float64."""
    array = np.asarray(probs)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"expected probabilities of a real number dtype, got {array.dtype}")
    if array.dtype not in _KEPT_FLOAT_DTYPES:
        array = array.astype(np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected probabilities of shape (N, C), got shape {array.shape}")
    if array.shape[1] < 2:
        raise ValueError(f"expected at least 2 classes in probabilities (N, C), got C={array.shape[1]}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"expected finite probabilities, got {int(np.sum(~np.isfinite(array)))} NaN/inf values")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"expected probabilities in [0, 1], got values from {array.min()} to {array.max()}")
    return array


def _as_labels(labels: Any, num_classes: int, name: str = "labels") -> np.ndarray:
    """`labels` as a 1-D int64 array of class indices in `[0, num_classes)`."""
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise TypeError(f"expected integer class indices for {name}, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"expected {name} of shape (N,), got shape {array.shape}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        bad = array[(array < 0) | (array >= num_classes)]
        hint = " (unknown labels, -1, must be dropped before scoring)" if np.any(bad == -1) else ""
        raise ValueError(
            f"expected {name} in [0, {num_classes - 1}], got {bad.size} outside it, e.g. {int(bad[0])}{hint}"
        )
    return array


def _checked(labels: Any, probs: Any, num_classes: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    probs = _as_probabilities(probs)
    if num_classes is not None and probs.shape[1] != num_classes:
        raise ValueError(f"expected probabilities with {num_classes} columns, got shape {probs.shape}")
    labels = _as_labels(labels, probs.shape[1])
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(f"expected as many labels as probability rows ({probs.shape[0]}), got {labels.shape[0]}")
    if labels.shape[0] == 0:
        raise ValueError("expected at least one segment to score, got 0")
    return labels, probs


def _checked_predictions(labels: Any, predicted: Any, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"expected a positive integer num_classes, got {num_classes!r}")
    labels = _as_labels(labels, num_classes)
    predicted = _as_labels(predicted, num_classes, name="predicted")
    if labels.shape != predicted.shape:
        raise ValueError(f"expected predicted of shape {labels.shape} like labels, got {predicted.shape}")
    return labels, predicted


def clip_probabilities(probs: Any, eps: Optional[float] = None) -> np.ndarray:
    """Clip probabilities away from 0 and 1 as scikit-learn's `log_loss` does.

    Rows are not renormalised after clipping: scikit-learn stopped doing so in 1.5 and only
    warns when rows do not sum to one (see :func:`segment_log_losses`).

    Args:
        probs: `(N, C)` probabilities; float16/32/64 keep their dtype, other numbers become float64.
        eps: lower clip bound; default the machine epsilon of the dtype. The upper bound is `1 - eps`.

    Returns:
        `(N, C)` array of the same float dtype, clipped to `[eps, 1 - eps]`.

    Raises:
        TypeError: a non-numeric array.
        ValueError: not 2-D, fewer than 2 columns, non-finite values, values outside [0, 1],
            or `eps` outside `[0, 0.5)`.
    """
    probs = _as_probabilities(probs)
    if eps is None:
        eps = np.finfo(probs.dtype).eps
    elif not (0 <= eps < 0.5):
        raise ValueError(f"expected eps in [0, 0.5), got {eps}")
    eps = probs.dtype.type(eps)
    return np.clip(probs, eps, 1 - eps)


def segment_log_losses(labels: Any, probs: Any, num_classes: Optional[int] = None) -> np.ndarray:
    """Cross-entropy of each segment, `-log(clip(p[i, labels[i]]))`.

    Args:
        labels: `(N,)` integer class indices in `[0, C)`.
        probs: `(N, C)` float probabilities (rows should sum to 1; a UserWarning says when not).
        num_classes: expected `C`; default `probs.shape[1]`.

    Returns:
        `(N,)` losses in the probabilities' float dtype (float16/32/64, else float64).
    """
    labels, probs = _checked(labels, probs, num_classes)
    eps = np.finfo(probs.dtype).eps
    sums = probs.sum(axis=1)
    if not np.all(np.isclose(sums, 1.0, rtol=math.sqrt(eps))):
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        message = f"expected probability rows summing to 1, got a row summing to {worst}"
        warnings.warn(message, UserWarning, stacklevel=2)
    # The log of the whole clipped array, then one entry per row: the same elementwise kernel
    # scikit-learn runs, so float32 results agree bit for bit.
    log_probs = np.log(clip_probabilities(probs))
    return -log_probs[np.arange(labels.shape[0]), labels]


def log_loss(labels: Any, probs: Any, num_classes: Optional[int] = None) -> float:
    """Mean multi-class log loss over segments (the DCASE 2021 Task 1b primary metric).

    Args:
        labels: `(N,)` integer class indices in `[0, C)`, N >= 1.
        probs: `(N, C)` float probabilities.
        num_classes: expected `C`; default `probs.shape[1]`.

    Returns:
        The mean of :func:`segment_log_losses`, equal to
        `sklearn.metrics.log_loss(labels, probs, labels=range(C))`.
    """
    return float(np.mean(segment_log_losses(labels, probs, num_classes)))


def predict(probs: Any) -> np.ndarray:
    """`(N,)` int64 index of the most probable class per row (the first on ties)."""
    return np.argmax(_as_probabilities(probs), axis=1).astype(np.int64)


def accuracy(labels: Any, predicted: Any, num_classes: int) -> float:
    """Fraction of segments whose predicted class index equals the label.

    Args:
        labels: `(N,)` integer class indices in `[0, num_classes)`, N >= 1.
        predicted: `(N,)` integer class indices, e.g. from :func:`predict`.
        num_classes: number of classes C.
    """
    labels, predicted = _checked_predictions(labels, predicted, num_classes)
    if labels.size == 0:
        raise ValueError("expected at least one segment to score, got 0")
    return float(np.mean(labels == predicted))


def confusion_matrix(labels: Any, predicted: Any, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) class pairs.

    Args:
        labels: `(N,)` integer true class indices in `[0, num_classes)`.
        predicted: `(N,)` integer predicted class indices.
        num_classes: number of classes C.

    Returns:
        `(C, C)` int64 matrix; rows are true classes, columns predicted classes.
    """
    labels, predicted = _checked_predictions(labels, predicted, num_classes)
    flat = np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(labels: Any, predicted: Any, num_classes: int) -> np.ndarray:
    """Recall of each class: correct segments of the class over segments of the class.

    Returns:
        `(C,)` float64; NaN for a class with no segment in `labels`.
    """
    matrix = confusion_matrix(labels, predicted, num_classes)
    support = matrix.sum(axis=1)
    out = np.full(num_classes, np.nan)
    present = support > 0
    out[present] = np.diag(matrix)[present] / support[present]
    return out


def per_class_log_loss(labels: Any, probs: Any, num_classes: Optional[int] = None) -> np.ndarray:
    """Mean log loss over each class's segments (scikit-learn's `log_loss` on that subset).

    Returns:
        `(C,)` float64; NaN for a class with no segment in `labels`.
    """
    losses = segment_log_losses(labels, probs, num_classes)
    return _class_means_of(losses, np.asarray(labels).astype(np.int64), np.asarray(probs).shape[1])


def _class_means_of(losses: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    out = np.full(count, np.nan)
    for index in range(count):
        mask = labels == index
        if mask.any():
            out[index] = float(np.mean(losses[mask]))
    return out


def class_mean(values: Any) -> float:
    """Mean of per-class values over the classes present (NaN entries are absent classes)."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    if present.size == 0:
        raise ValueError(f"expected at least one present (non-NaN) class value, got {values.size} NaN")
    return float(np.mean(present))


def _optional(value: float) -> Optional[float]:
    return None if math.isnan(value) else float(value)


def score(labels: Any, probs: Any, classes: Sequence[str]) -> Dict[str, Any]:
    """All segment-level scores of one evaluation, as a JSON-ready dict.

    Args:
        labels: `(N,)` integer class indices in `[0, C)`; drop unknown (-1) segments first.
        probs: `(N, C)` float probabilities, columns in `classes` order.
        classes: the C class names.

    Returns:
        A dict with keys `accuracy` and `log_loss` (floats over segments), `per_class`
        (`{class: {"accuracy", "log_loss", "n"}}`, None scores for a class without segments),
        `class_mean_accuracy` and `class_mean_log_loss` (means over classes present),
        `confusion_matrix` (C lists of C ints, rows true, columns predicted), `classes` and
        `n_segments`.

    Raises:
        TypeError: non-integer labels or non-numeric probabilities.
        ValueError: mismatched shapes, `C != len(classes)`, non-finite probabilities or
            probabilities outside [0, 1], labels outside `[0, C)`, or no segments.
    """
    if isinstance(classes, str):
        raise TypeError(f"expected a sequence of class names, got the string {classes!r}")
    classes = [str(name) for name in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"expected distinct class names, got {classes}")
    labels, probs = _checked(labels, probs, len(classes))
    count = len(classes)
    predicted = predict(probs)
    class_acc = per_class_accuracy(labels, predicted, count)
    losses = segment_log_losses(labels, probs, count)
    class_loss = _class_means_of(losses, labels, count)
    support = np.bincount(labels, minlength=count)
    per_class = {
        name: {"accuracy": _optional(class_acc[i]), "log_loss": _optional(class_loss[i]), "n": int(support[i])}
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": accuracy(labels, predicted, count),
        "log_loss": float(np.mean(losses)),
        "per_class": per_class,
        "class_mean_accuracy": class_mean(class_acc),
        "class_mean_log_loss": class_mean(class_loss),
        "confusion_matrix": confusion_matrix(labels, predicted, count).tolist(),
        "classes": classes,
        "n_segments": int(labels.shape[0]),
    }


def aggregate_clips(
    clip_ids: Any, probs: Any, labels: Optional[Any] = None, pool: str = "mean-prob"
) -> Tuple[List[str], np.ndarray, Optional[np.ndarray]]:
    """Pool segment probabilities into one row per clip (see :func:`pool_segments`).

    Args:
        clip_ids: `(N,)` clip id (str) of each segment.
        probs: `(N, C)` float segment probabilities.
        labels: `(N,)` integer segment labels (may include -1 for unknown), or None.
        pool: one of :data:`CLIP_POOLS`: `mean-prob` (the mean probability) or
            `mean-log-prob` (the softmax of the mean log-probability).

    Returns:
        `(ids, clip_probs, clip_labels)`: the M distinct ids in order of first appearance,
        `(M, C)` float64 pooled probabilities, and `(M,)` int64 clip labels (None when
        `labels` is None).

    Raises:
        ValueError: mismatched lengths, an unknown pool, or a clip whose segments carry
            different labels (the message names the clip).
    """
    check_clip_pool(pool)
    probs = _as_probabilities(probs)
    ids = np.asarray(clip_ids)
    if ids.ndim != 1 or ids.shape[0] != probs.shape[0]:
        raise ValueError(f"expected clip_ids of shape ({probs.shape[0]},), got {ids.shape}")
    ids = ids.astype(str)
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    row_clip = rank[inverse.reshape(-1)]
    counts = np.bincount(row_clip, minlength=order.size)
    values = _log_probabilities(probs) if pool == "mean-log-prob" else probs.astype(np.float64)
    sums = np.zeros((order.size, probs.shape[1]), dtype=np.float64)
    np.add.at(sums, row_clip, values)
    means = sums / counts[:, None]
    if pool == "mean-log-prob":
        means = _softmax_rows(means)
    names = [str(name) for name in unique[order]]
    if labels is None:
        return names, means, None
    seg_labels = np.asarray(labels)
    if seg_labels.dtype.kind not in "iu":
        raise TypeError(f"expected integer labels, got dtype {seg_labels.dtype}")
    if seg_labels.shape != ids.shape:
        raise ValueError(f"expected labels of shape {ids.shape}, got {seg_labels.shape}")
    seg_labels = seg_labels.astype(np.int64)
    clip_labels = seg_labels[first[order]]
    disagree = np.flatnonzero(seg_labels != clip_labels[row_clip])
    if disagree.size:
        clip = names[row_clip[disagree[0]]]
        found = sorted({int(v) for v in seg_labels[row_clip == row_clip[disagree[0]]]})
        raise ValueError(f"expected one label per clip, got labels {found} for the segments of clip {clip!r}")
    return names, means, clip_labels


def check_clip_pool(pool: str) -> None:
    """Raise ValueError unless `pool` is one of :data:`CLIP_POOLS`."""
    if pool not in CLIP_POOLS:
        raise ValueError(f"expected a clip pool in {CLIP_POOLS}, got {pool!r}")


def _log_probabilities(probs: np.ndarray) -> np.ndarray:
    """`log(p)` in float64, zeros floored at the smallest normal float64 (a finite log)."""
    return np.log(np.clip(probs.astype(np.float64), np.finfo(np.float64).tiny, None))


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def pool_segments(probs: Any, pool: str = "mean-prob") -> np.ndarray:
    """One clip's segment probabilities pooled into the clip's.

    `mean-prob` averages the probabilities; `mean-log-prob` averages the log-probabilities and
    renormalizes (a normalized geometric mean: it rewards classes on which the segments agree,
    and a class that one segment all but rules out stays unlikely for the clip).

    Args:
        probs: `(K, C)` float probabilities of the clip's K segments, K >= 1.
        pool: one of :data:`CLIP_POOLS`.

    Returns:
        `(C,)` float64 probabilities summing to 1.
    """
    check_clip_pool(pool)
    probs = _as_probabilities(probs)
    if probs.shape[0] == 0:
        raise ValueError("expected at least one segment to pool, got 0")
    if pool == "mean-prob":
        return probs.astype(np.float64).mean(axis=0)
    return _softmax_rows(_log_probabilities(probs).mean(axis=0, keepdims=True))[0]


def reliability_bins(labels: Any, probs: Any, bins: int = ECE_BINS) -> Dict[str, np.ndarray]:
    """Accuracy against confidence in equal-width bins: the data of a reliability diagram.

    A row's confidence is its largest probability; it falls in bin `b` when
    `b / bins < confidence <= (b + 1) / bins` (a confidence of 0 goes into bin 0).

    Args:
        labels: `(N,)` integer class indices in `[0, C)`, N >= 1.
        probs: `(N, C)` float probabilities.
        bins: the number of bins, >= 1.

    Returns:
        `{"edges": (bins + 1,), "count": (bins,) int64, "confidence": (bins,), "accuracy":
        (bins,)}`, float64 means per bin (NaN in an empty bin).
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"expected bins to be an int >= 1, got {bins!r}")
    labels, probs = _checked(labels, probs, None)
    confidence = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, minlength=bins) / count
        mean_accuracy = np.bincount(which, correct, minlength=bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count.astype(np.int64),
            "confidence": mean_confidence, "accuracy": mean_accuracy}


def expected_calibration_error(labels: Any, probs: Any, bins: int = ECE_BINS) -> float:
    """Expected calibration error: `sum_b n_b / N * |accuracy_b - confidence_b|` over the
    bins of :func:`reliability_bins` (Guo et al., 2017)."""
    table = reliability_bins(labels, probs, bins)
    filled = table["count"] > 0
    weights = table["count"][filled] / table["count"].sum()
    return float(np.sum(weights * np.abs(table["accuracy"][filled] - table["confidence"][filled])))
