"""Figures for evaluation and training: confusion matrix, per-class accuracy, reliability
diagram, training curves.

matplotlib is imported inside each function with the non-interactive Agg backend, so importing
this module costs nothing and plotting works without a display. Every figure is written to a
temporary file, renamed into place, and closed.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from avsc_pipeline.atomic import atomic_path

logger = logging.getLogger(__name__)

CURVE_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_accuracy",
    "val_log_loss",
    "best",
    "lr",
    "lr_last",
    "samples_per_s",
    "data_wait_fraction",
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: "str | os.PathLike[str]") -> Path:
    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _check_classes(classes: Sequence[str], count: int, what: str) -> List[str]:
    if isinstance(classes, str):
        raise TypeError(f"expected a sequence of class names, got the string {classes!r}")
    classes = [str(name) for name in classes]
    if len(classes) != count:
        raise ValueError(f"expected {count} class names for {what}, got {len(classes)}")
    return classes


def plot_confusion_matrix(
    matrix: Any, classes: Sequence[str], path: "str | os.PathLike[str]", title: str = "Confusion matrix"
) -> Path:
    """Draw a confusion matrix: colour by row-normalised fraction, cells annotated with counts.

    Args:
        matrix: `(C, C)` integer counts, rows true classes, columns predicted classes.
        classes: the C class names.
        path: the PNG file to write.
        title: the figure title.

    Returns:
        `path` as a Path.
    """
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"expected a square (C, C) matrix, got shape {counts.shape}")
    if counts.dtype.kind not in "iu" or (counts.size and counts.min() < 0):
        raise ValueError(f"expected non-negative integer counts, got dtype {counts.dtype}")
    classes = _check_classes(classes, counts.shape[0], "the confusion matrix")
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    plt = _pyplot()
    size = 2.5 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=classes, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for row in range(counts.shape[0]):
        for col in range(counts.shape[1]):
            colour = "white" if fractions[row, col] > 0.5 else "black"
            ax.text(col, row, str(int(counts[row, col])), ha="center", va="center", color=colour, fontsize=8)
    return _save(fig, path)


def plot_per_class_accuracy(
    runs: Mapping[str, Sequence[Optional[float]]], classes: Sequence[str], path: "str | os.PathLike[str]"
) -> Path:
    """Grouped bar chart of per-class accuracy: one group per class, one bar per run.

    Args:
        runs: run name -> C per-class accuracies as fractions in [0, 1] (None or NaN for a
            class absent from that run's labels; drawn as no bar).
        classes: the C class names.
        path: the PNG file to write.

    Returns:
        `path` as a Path.
    """
    if not runs:
        raise ValueError("expected at least one run to plot, got none")
    classes = [str(name) for name in classes]
    values = {}
    for name, accs in runs.items():
        row = np.array([np.nan if v is None else float(v) for v in accs], dtype=np.float64)
        if row.shape != (len(classes),):
            raise ValueError(f"expected {len(classes)} per-class accuracies for run {name!r}, got {row.shape[0]}")
        values[name] = row
    plt = _pyplot()
    width = 0.8 / len(values)
    positions = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.35 * len(classes) * len(values) + 0.5 * len(classes)), 4.5))
    for offset, (name, row) in enumerate(values.items()):
        ax.bar(positions - 0.4 + width * (offset + 0.5), 100.0 * row, width=width, label=name)
    ax.set_xticks(positions, labels=classes, rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Per-class accuracy")
    return _save(fig, path)


def plot_reliability_diagram(curves: Mapping[str, Mapping[str, Any]], path: "str | os.PathLike[str]",
                             title: str = "Reliability diagram") -> Path:
    """Accuracy against confidence in bins, one curve per set of probabilities, with its ECE.

    The first curve is drawn as bars (the bin's accuracy over the bin), the others as lines
    through (mean confidence, accuracy); the diagonal is perfect calibration. A lower panel
    shows how many rows each bin of the first curve holds.

    Args:
        curves: name (e.g. `calibrated`, `uncalibrated`) -> the dict of
            :func:`avsc_pipeline.evaluation.metrics.reliability_bins` plus `ece` (a float).
        path: the PNG file to write.
        title: the figure title.

    Returns:
        `path` as a Path.
    """
    if not curves:
        raise ValueError("expected at least one set of reliability bins, got none")
    for name, table in curves.items():
        missing = [k for k in ("edges", "count", "confidence", "accuracy", "ece") if k not in table]
        if missing:
            raise ValueError(f"expected reliability bins with keys {missing} for {name!r}, got {sorted(table)}")
    plt = _pyplot()
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    for number, (name, table) in enumerate(curves.items()):
        edges, count = np.asarray(table["edges"]), np.asarray(table["count"])
        accuracy, confidence = np.asarray(table["accuracy"]), np.asarray(table["confidence"])
        filled = count > 0
        label = f"{name} (ECE {100.0 * float(table['ece']):.1f} %)"
        colour = f"C{number}"
        if number == 0:
            ax.bar(edges[:-1][filled], accuracy[filled], width=np.diff(edges)[filled], align="edge", color=colour,
                   edgecolor="black", alpha=0.6, label=label)
            ax_count.bar(edges[:-1], count, width=np.diff(edges), align="edge", color=colour, edgecolor="black",
                         alpha=0.6)
        else:
            ax.plot(confidence[filled], accuracy[filled], marker="o", markersize=4, color=colour, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title)
    ax_count.set_xlabel("confidence (largest probability)")
    ax_count.set_ylabel("segments")
    ax_count.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _read_curves(path: Path) -> Dict[str, np.ndarray]:
    with open(path, "r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a CSV header with an 'epoch' column, got {reader.fieldnames}")
        columns: Dict[str, List[float]] = {name: [] for name in reader.fieldnames if name in CURVE_COLUMNS}
        for number, record in enumerate(reader, start=2):
            for name, series in columns.items():
                text = (record.get(name) or "").strip()
                try:
                    series.append(float(text) if text else math.nan)
                except ValueError as err:
                    raise ValueError(f"{path}:{number}: expected a number in column {name!r}, got {text!r}") from err
    missing = [name for name in CURVE_COLUMNS if name not in columns]
    if missing:
        logger.debug("%s: no columns %s; those curves are left out", path, missing)
    return {name: np.asarray(series, dtype=np.float64) for name, series in columns.items()}


def _plot_series(ax: Any, data: Dict[str, np.ndarray], names: Sequence[str], ylabel: str) -> None:
    epoch = data["epoch"]
    drawn = False
    for name in names:
        series = data.get(name)
        if series is not None and np.isfinite(series).any():
            keep = np.isfinite(series)
            ax.plot(epoch[keep], series[keep], marker="o", markersize=3, label=name)
            drawn = True
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)


def plot_curves(metrics_csv_path: "str | os.PathLike[str]", out_png: "str | os.PathLike[str]") -> Path:
    """Plot a training run's curves from its per-epoch metrics.csv.

    The CSV has a header naming some of :data:`CURVE_COLUMNS` (`epoch` is required; empty cells,
    e.g. epochs without validation, are gaps). Three panels: losses (train_loss, val_log_loss),
    accuracies (train_accuracy, val_accuracy) and the learning rate of each epoch's first and last
    step (log scale); a dotted line marks best.pt's epoch (`best` = 1).

    Args:
        metrics_csv_path: the training metrics.csv.
        out_png: the PNG file to write.

    Returns:
        `out_png` as a Path.

    Raises:
        ValueError: no `epoch` column, no rows, or a non-numeric cell (named by line).
    """
    path = Path(metrics_csv_path)
    data = _read_curves(path)
    if data["epoch"].size == 0:
        raise ValueError(f"{path}: expected at least one epoch row, got none")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    _plot_series(axes[0], data, ("train_loss", "val_log_loss"), "loss")
    _plot_series(axes[1], data, ("train_accuracy", "val_accuracy"), "accuracy")
    _plot_series(axes[2], data, ("lr", "lr_last"), "learning rate")
    best = data.get("best")
    if best is not None and np.any(best == 1):
        epoch = float(data["epoch"][np.flatnonzero(best == 1)[0]])
        for ax in axes[:2]:
            ax.axvline(epoch, linestyle=":", color="gray", label=f"best.pt (epoch {epoch:.0f})")
            ax.legend(fontsize=8)
    lr = data.get("lr")
    if lr is not None and np.any(lr[np.isfinite(lr)] > 0):
        axes[2].set_yscale("log")
    fig.suptitle(path.parent.name or str(path))
    fig.tight_layout()
    return _save(fig, out_png)
