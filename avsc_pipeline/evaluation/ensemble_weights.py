"""Ensemble weights from the members' validation rows, and the check that an ensemble helps.

An equal-weight average of a strong and two weak models can be far worse than the strong one
alone (the demo's audio, video and joint runs: log loss 0.721 against the joint model's 0.287).
`avsc-eval --weights auto` therefore takes the member weights that minimize the log loss of the
combined probabilities on validation rows (:func:`fit_weights`: exponentiated gradient on the
simplex, `w >= 0`, `sum w = 1`), and every ensemble is checked there: when its validation log
loss is worse than its best member's, a warning says so (the log, and `metrics.json`'s
`ensemble_validation`).

Which rows. Runs store no validation predictions, so they are recomputed, the way
`avsc-calibrate --validation` does: training held out `loader.val_fraction` of each class's
recording locations of `FEATURES/train`, chosen with `loader.split_seed`
(:func:`~avsc_pipeline.dataio.samplers.split_items`), and the same call on the same folder gives
the same rows. Every member scores them with its calibrated probabilities, as the ensemble
combines them. The members must share that split (the same `val_fraction` and `split_seed`, and
the same training folder): otherwise one member's validation rows are another's training rows.
Runs that selected `best.pt` on a split of their own (`train.validation: evaluate`) validate on
that whole split instead, and so do the weights: scored on that same split, the figures are
"selected on the scored split" (a warning says so).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.samplers import split_items
from avsc_pipeline.devices import pick_device
from avsc_pipeline.evaluation import metrics
from avsc_pipeline.evaluation.temperature import apply_temperature
from avsc_pipeline.evaluation.ensemble import normalized_weights
from avsc_pipeline.evaluation.metrics import ENSEMBLE_MEANS
from avsc_pipeline.evaluation.loading import load_scorer, resolve_members
from avsc_pipeline.evaluation.evaluate import check_split_folder, loader_config_of, open_split
from avsc_pipeline.evaluation.scoring import score_rows
from avsc_pipeline.models.checkpoint import ModelArtifact
from avsc_pipeline.sections.train import VALIDATION_LOCATIONS

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: The `--weights` value that fits the weights on validation rows.
AUTO = "auto"
_EPS = np.finfo(np.float64).eps  # the clipping of scikit-learn's log_loss


def combine(member_probs: np.ndarray, weights: Sequence[float], mean: str = "arithmetic") -> np.ndarray:
    """The ensemble's probabilities, as :meth:`~.ensemble.Ensemble.combine` forms them.

    Args:
        member_probs: `(M, N, C)` float64 probabilities of M members.
        weights: M weights summing to 1.
        mean: `arithmetic` (`sum_m w_m p_m`) or `geometric` (`softmax(sum_m w_m log p_m)`).

    Returns:
        `(N, C)` float64.
    """
    member_probs = np.asarray(member_probs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 1, 1)
    if mean == "arithmetic":
        return (w * member_probs).sum(axis=0)
    summed = (w * np.log(np.clip(member_probs, 1e-300, None))).sum(axis=0)
    summed -= summed.max(axis=1, keepdims=True)
    out = np.exp(summed)
    return out / out.sum(axis=1, keepdims=True)


def _loss_and_gradient(member_probs: np.ndarray, labels: np.ndarray, w: np.ndarray,
                       mean: str) -> Tuple[float, np.ndarray]:
    """Mean log loss (clipped) of the combination at `w`, and its gradient in `w`."""
    rows = np.arange(len(labels))
    if mean == "arithmetic":
        picked = member_probs[:, rows, labels]                       # (M, N)
        mixed = np.clip(w @ picked, _EPS, None)                      # (N,)
        return float(-np.log(mixed).mean()), -(picked / mixed).mean(axis=1)
    logs = np.log(np.clip(member_probs, 1e-300, None))               # (M, N, C)
    summed = np.tensordot(w, logs, axes=1)                           # (N, C)
    top = summed.max(axis=1, keepdims=True)
    partition = np.log(np.exp(summed - top).sum(axis=1)) + top[:, 0]
    soft = np.exp(summed - partition[:, None])
    loss = float(np.clip(partition - summed[rows, labels], None, -np.log(_EPS)).mean())
    gradient = (-(logs[:, rows, labels]) + (logs * soft[None]).sum(axis=2)).mean(axis=1)
    return loss, gradient


def fit_weights(member_probs: np.ndarray, labels: np.ndarray, mean: str = "arithmetic",
                max_steps: int = 5000, tolerance: float = 1e-12) -> np.ndarray:
    """The member weights on the simplex that minimize the combination's log loss.

    The log loss is convex in the weights for both means; exponentiated gradient (a
    multiplicative step `w <- w * exp(-eta * g)`, renormalized) keeps the weights on the
    simplex, with a step that halves until the loss falls. The best single member is compared
    at the end, so the result is never worse than it.

    Args:
        member_probs: `(M, N, C)` float64 probabilities of M members on N labeled rows.
        labels: `(N,)` int class indices in 0..C-1.
        mean: `arithmetic` or `geometric`.
        max_steps: accepted steps at most.
        tolerance: stop when a step lowers the loss by less.

    Returns:
        `(M,)` float64 weights, non-negative, summing to 1.

    Raises:
        ValueError: shapes that do not match, no rows, labels outside 0..C-1, or an unknown mean.
    """
    member_probs = np.asarray(member_probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if mean not in ENSEMBLE_MEANS:
        raise ValueError(f"expected mean in {ENSEMBLE_MEANS}, got {mean!r}")
    if member_probs.ndim != 3 or member_probs.shape[1] != len(labels) or len(labels) == 0:
        raise ValueError(f"expected (M, N, C) member probabilities and (N,) labels with N > 0, got "
                         f"{member_probs.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= member_probs.shape[2]:
        raise ValueError(f"expected labels in 0..{member_probs.shape[2] - 1}, got {labels.min()}..{labels.max()}")
    count = member_probs.shape[0]
    w = np.full(count, 1.0 / count)
    loss, gradient = _loss_and_gradient(member_probs, labels, w, mean)
    eta = 1.0
    for _ in range(max_steps):
        step = np.exp(-eta * (gradient - gradient.min()))
        trial = w * step / (w * step).sum()
        trial_loss, trial_gradient = _loss_and_gradient(member_probs, labels, trial, mean)
        if trial_loss > loss:
            eta *= 0.5
            if eta < 1e-12:
                break
            continue
        gain = loss - trial_loss
        w, loss, gradient, eta = trial, trial_loss, trial_gradient, eta * 1.5
        if gain < tolerance:
            break
    vertices = [(_loss_and_gradient(member_probs, labels, np.eye(count)[m], mean)[0], m) for m in range(count)]
    best_loss, best = min(vertices)
    return np.eye(count)[best] if best_loss < loss else w


@dataclass(frozen=True)
class EnsembleCheck:
    """An ensemble's members and combination scored on their validation rows.

    Attributes:
        split_dir: the folder whose validation rows were scored: the training split (its
            held-out locations), or the split the runs selected on (`train.validation`).
        n_rows: the labeled validation rows.
        n_locations: their recording locations.
        weights: the member weights used (fitted with `fitted`, else as given).
        fitted: whether the weights were fitted (`--weights auto`).
        mean: how the members are combined.
        member_log_loss: each member's validation log loss, in `--checkpoint` order.
        ensemble_log_loss: the ensemble's validation log loss (its own temperature applied).
        best_member: the checkpoint of the member with the lowest log loss.
        warning: the warning given (the ensemble worse than its best member), or None.
    """

    split_dir: str
    n_rows: int
    n_locations: int
    weights: Tuple[float, ...]
    fitted: bool
    mean: str
    member_log_loss: Tuple[float, ...]
    ensemble_log_loss: float
    best_member: str
    warning: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def parse_weights_option(text: Optional[str]) -> Tuple[bool, Optional[Tuple[float, ...]]]:
    """`--weights`: `(True, None)` for `auto`, else `(False, the numbers or None)`.

    Raises:
        ValueError: neither `auto` nor comma-separated numbers (naming `--weights`).
    """
    from avsc_pipeline.evaluation.ensemble import parse_weights

    if text is not None and str(text).strip().lower() == AUTO:
        return True, None
    return False, parse_weights(text)


def validation_settings(artifacts: Sequence[ModelArtifact], paths: Sequence[PathLike]) -> Tuple[str, Any, Any]:
    """How the checkpoints' runs chose their validation rows: `(train.validation,
    loader.val_fraction, loader.split_seed)`, the last two None for a selection split.

    Raises:
        ValueError: checkpoints whose settings differ (one's validation rows would be another's
            training rows), naming both.
    """
    settings = []
    for artifact, path in zip(artifacts, paths):
        validation = (artifact.config.get("train") or {}).get("validation", VALIDATION_LOCATIONS)
        loader = loader_config_of(artifact, None, None, str(path))
        settings.append((validation, loader.val_fraction, loader.split_seed) if validation == VALIDATION_LOCATIONS
                        else (validation, None, None))
    for setting, path in zip(settings[1:], paths[1:]):
        if setting != settings[0]:
            raise ValueError(f"{paths[0]} and {path}: expected the same validation split (train.validation, "
                             f"loader.val_fraction, loader.split_seed), got {settings[0]} and {setting}")
    return settings[0]


def validation_rows(dataset: ShardDataset, artifacts: Sequence[ModelArtifact], paths: Sequence[PathLike]) -> np.ndarray:
    """The labeled rows of the checkpoints' validation locations of a training split, as
    training holds them out (`loader.val_fraction`, `loader.split_seed`).

    Raises:
        ValueError: checkpoints whose validation settings differ, or runs that selected on a
            split of their own (`train.validation`: its rows are that whole split).
    """
    validation, fraction, seed = validation_settings(artifacts, paths)
    if validation != VALIDATION_LOCATIONS:
        raise ValueError(f"{paths[0]}: selected on the {validation!r} split (train.validation), not on held-out "
                         f"training locations: its validation rows are the labeled rows of FEATURES/{validation}")
    labels = np.asarray(dataset.labels)
    split = split_items(dataset.identifiers, labels, dataset.is_augmented, fraction, seed)
    return split.validation[labels[split.validation] >= 0]


def check_ensemble(checkpoints: Sequence[PathLike], train_dir: PathLike, weights: Optional[Sequence[float]] = None,
                   mean: Optional[str] = None, fit: bool = False, device: "str | torch.device" = "auto",
                   modality: Optional[str] = None, batch_size: Optional[int] = None, workers: Optional[int] = None,
                   progress: bool = False) -> EnsembleCheck:
    """Score an ensemble's members on their validation rows of `train_dir`; fit the weights
    with `fit`; warn when the ensemble is worse there than its best member.

    Args:
        checkpoints: `--checkpoint` values: several checkpoints, or one ensemble file.
        train_dir: the training split folder the members were trained on (`FEATURES/train`).
        weights: one weight per checkpoint (None: equal); ignored with `fit`.
        mean: `arithmetic` (default) or `geometric`.
        fit: fit the weights (`--weights auto`).
        device: `auto`, `cpu`, `cuda`, `cuda:N` or a torch.device.
        modality: None, or `audio`/`video`: one modality of every (joint) member.
        batch_size: segments per batch; default the first checkpoint's.
        workers: loader worker processes; default the checkpoint's.
        progress: progress bars.

    Returns:
        The :class:`EnsembleCheck` (its `weights` are what the ensemble should be scored with).

    Raises:
        ValueError: `fit` with an ensemble file (its weights are fixed), a folder without
            labeled validation rows, or members that do not share a validation split.
        FileNotFoundError: no such training split folder.
    """
    paths, spec, ensemble_file = resolve_members(checkpoints, None if fit else weights, mean)
    if fit and ensemble_file is not None:
        raise ValueError(f"--weights {AUTO}: {ensemble_file} fixes its members' weights; give the checkpoints "
                         "themselves to fit new ones")
    train_dir = Path(train_dir)
    check_split_folder(train_dir)
    device = device if isinstance(device, torch.device) else pick_device(device)
    folder, member_probs, labels, locations = _member_probabilities(paths, train_dir, device, modality, batch_size,
                                                                    workers, progress)
    mean = spec.mean
    chosen = (fit_weights(member_probs, labels, mean) if fit
              else np.asarray(normalized_weights(spec.weights or None, len(paths))))
    combined = combine(member_probs, chosen, mean)
    if spec.temperature != 1.0:
        combined = apply_temperature(combined, spec.temperature)
    member_loss = tuple(metrics.log_loss(labels, p) for p in member_probs)
    ensemble_loss = metrics.log_loss(labels, combined)
    best = int(np.argmin(member_loss))
    warning = None
    if ensemble_loss > member_loss[best] + 1e-9:
        warning = (f"the ensemble's validation log loss {ensemble_loss:.4f} is worse than its best member's, "
                   f"{member_loss[best]:.4f} ({paths[best]}){'' if fit else '; --weights auto fits the weights'}")
        logger.warning("%s", warning)
    logger.info("ensemble on %d validation rows of %s: weights %s, log loss %.4f (members %s)", len(labels),
                folder, ", ".join(f"{w:.3g}" for w in chosen), ensemble_loss,
                ", ".join(f"{loss:.4f}" for loss in member_loss))
    return EnsembleCheck(str(folder.resolve()), int(len(labels)), int(len(np.unique(locations))),
                         tuple(float(w) for w in chosen), fit, mean, member_loss, float(ensemble_loss),
                         str(paths[best]), warning)


def _member_probabilities(paths: Sequence[Path], train_dir: Path, device: torch.device, modality: Optional[str],
                          batch_size: Optional[int], workers: Optional[int],
                          progress: bool) -> Tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """The folder scored, and `(M, N, C)` calibrated member probabilities of its validation
    rows, their labels and locations: the held-out locations of `train_dir`, or every labeled
    row of the split the runs selected on (`train.validation`, beside `train_dir`)."""
    loaded = [load_scorer(p, device, modality) for p in paths]
    artifacts = [artifact for _, artifact in loaded]
    validation = validation_settings(artifacts, paths)[0]
    folder = train_dir if validation == VALIDATION_LOCATIONS else train_dir.parent / validation
    check_split_folder(folder)
    probs: List[np.ndarray] = []
    for index, ((scorer, artifact), path) in enumerate(zip(loaded, paths)):
        with open_split(folder, scorer, path) as dataset:
            if index == 0:
                labels = np.asarray(dataset.labels)
                rows = (validation_rows(dataset, artifacts, paths) if validation == VALIDATION_LOCATIONS
                        else np.flatnonzero(labels >= 0))
                if len(rows) == 0:
                    raise ValueError(f"{folder}: expected labeled rows of the members' validation locations, got "
                                     "none (trained with loader.val_fraction 0, or not their training split)")
                labels, locations = labels[rows].astype(np.int64), np.asarray(dataset.identifiers)[rows]
                logger.info("scoring %d members on %d validation rows of %s", len(paths), len(rows), folder)
            config = loader_config_of(artifact, batch_size, workers, str(path), device)
            probs.append(score_rows(dataset, scorer, config, rows=rows, progress=progress))
    return folder, np.stack(probs), labels, locations
