"""Fit a temperature on a labeled split and write it into a new file: `avsc-calibrate`.

Training already fits each checkpoint's temperature on its run's validation locations. This
refits it on another labeled split, or fits an ensemble's own temperature:

* one checkpoint: the temperature that minimizes the log loss of the model's uncalibrated
  probabilities; written into a copy of the checkpoint (`dataclasses.replace` of its artifact
  through :func:`~avsc_pipeline.models.checkpoint.save_checkpoint`; a scoring-only file
  without the training resume state);
* several checkpoints, or an ensemble file: the members keep their own temperatures and the
  ensemble's is fitted on their combined probabilities; written as an ensemble file
  (:mod:`.ensemble`).

The split must not be the one the result is scored on. With `validation=True` only the rows of
the checkpoints' own validation locations (`loader.val_fraction`, `loader.split_seed`) of a
training split are used: the rows training held out. Nothing is ever overwritten: an existing
output file (the input among them) is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from avsc_pipeline.devices import pick_device
from avsc_pipeline.evaluation.temperature import TemperatureDecision, fit_temperature, log_loss_at
from avsc_pipeline.evaluation.ensemble import (Ensemble, EnsembleSpec, is_ensemble_file, normalized_weights,
                                               write_ensemble_file)
from avsc_pipeline.evaluation.ensemble_weights import validation_rows
from avsc_pipeline.evaluation.evaluate import check_split_folder, loader_config_of, open_split
from avsc_pipeline.evaluation.scoring import score_rows
from avsc_pipeline.evaluation.loading import load_scorer, resolve_members
from avsc_pipeline.models.checkpoint import ModelArtifact, save_checkpoint

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` fitted and wrote.

    Attributes:
        out: the new checkpoint or ensemble file.
        kind: `checkpoint` or `ensemble`.
        temperature: the fitted temperature.
        previous: the temperature before (the checkpoint's, or the ensemble file's; 1.0 for a
            new ensemble).
        n_rows: the labeled rows it was fitted on.
        log_loss_uncalibrated: their log loss at temperature 1.
        log_loss_before: their log loss at the previous temperature.
        log_loss_calibrated: their log loss at the fitted temperature.
    """

    out: Path
    kind: str
    temperature: float
    previous: float
    n_rows: int
    log_loss_uncalibrated: float
    log_loss_before: float
    log_loss_calibrated: float


def calibrate(checkpoints: Sequence[PathLike], split_dir: PathLike, out: PathLike,
              weights: Optional[Sequence[float]] = None, mean: Optional[str] = None, validation: bool = False,
              device: "str | torch.device" = "auto", batch_size: Optional[int] = None, workers: Optional[int] = None,
              progress: bool = False) -> CalibrationResult:
    """Fit a temperature on the labeled rows of `split_dir` and write a new checkpoint or ensemble file.

    Args:
        checkpoints: one checkpoint, several (an ensemble), or one ensemble file.
        split_dir: a labeled split folder of shards made with the checkpoints' features.
        out: the new file: a checkpoint (`.pt`) for one checkpoint, an ensemble file
            (`.yaml`) otherwise; it must not exist.
        weights: one weight per checkpoint of a new ensemble; None for equal weights.
        mean: `arithmetic` (default) or `geometric` for a new ensemble.
        validation: fit on the checkpoints' own validation locations of `split_dir` only (give
            the training split).
        device: `auto`, `cpu`, `cuda`, `cuda:N`.
        batch_size: segments per batch; default the (first) checkpoint's.
        workers: loader worker processes; default the checkpoint's.
        progress: show a progress bar.

    Raises:
        FileExistsError: `out` exists.
        ValueError: an output name of the wrong kind, a split without labels (naming it),
            checkpoints that do not match each other, or a weight list of the wrong length.
        CheckpointError: an unreadable checkpoint.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out}: already exists (avsc-calibrate never overwrites a file; "
                              "give a new name)")
    paths, spec, ensemble_file = resolve_members(checkpoints, weights, mean)
    ensemble = len(paths) > 1 or ensemble_file is not None
    if ensemble != is_ensemble_file(out):
        wanted = "an ensemble file name ending in .yaml" if ensemble else "a checkpoint file name (e.g. best-cal.pt)"
        raise ValueError(f"--out {out}: expected {wanted} for {len(paths)} checkpoint(s)")
    split_dir = Path(split_dir)
    check_split_folder(split_dir)
    device = device if isinstance(device, torch.device) else pick_device(device)
    # One checkpoint: fitted on its raw probabilities. An ensemble: on its members' calibrated ones.
    loaded = [load_scorer(p, device, calibrated=ensemble) for p in paths]
    members, artifacts = [m for m, _ in loaded], [a for _, a in loaded]
    scorer = Ensemble(members, [str(p) for p in paths], spec.weights or None, spec.mean) if ensemble else members[0]
    loader_config = loader_config_of(artifacts[0], batch_size, workers, str(paths[0]))
    with open_split(split_dir, scorer, ensemble_file or ", ".join(str(p) for p in paths)) as dataset:
        rows = validation_rows(dataset, artifacts, paths) if validation else np.flatnonzero(dataset.labels >= 0)
        if len(rows) == 0:
            raise ValueError(f"{split_dir}: expected labeled segments to fit a temperature on, got none "
                             f"({'no validation locations' if validation else 'an unlabeled split'})")
        logger.info("%s: scoring %d segments to fit the calibration temperature on...", split_dir, len(rows))
        probs = score_rows(dataset, scorer, loader_config, rows=rows, progress=progress)
        labels = np.asarray(dataset.labels)[rows].astype(np.int64)
        n_locations = len(np.unique(np.asarray(dataset.identifiers)[rows]))
    logger.info("fitting the calibration temperature on %d rows...", len(labels))
    temperature = fit_temperature(probs, labels)
    previous = (spec.temperature if ensemble_file is not None else 1.0) if ensemble else artifacts[0].temperature
    fitted_on = f"{split_dir.resolve()}{' (validation locations)' if validation else ''}"
    if ensemble:
        write_ensemble_file(out, EnsembleSpec(tuple(str(p.resolve()) for p in paths),
                                              normalized_weights(spec.weights or None, len(paths)), spec.mean,
                                              temperature, tuple(float(a.temperature) for a in artifacts),
                                              fitted_on, int(len(rows))))
    else:
        reason = (f"temperature {temperature:.3g} fitted by avsc-calibrate on {len(rows)} rows of {fitted_on} "
                  f"(log loss {log_loss_at(probs, labels, 1.0):.4f} -> {log_loss_at(probs, labels, temperature):.4f})")
        record = TemperatureDecision(temperature, temperature != 1.0, reason, int(len(rows)), n_locations, temperature)
        _write_checkpoint(out, artifacts[0], temperature, record.to_dict())
    result = CalibrationResult(out, "ensemble" if ensemble else "checkpoint", temperature, float(previous),
                               int(len(rows)), log_loss_at(probs, labels, 1.0), log_loss_at(probs, labels, previous),
                               log_loss_at(probs, labels, temperature))
    logger.info("%s: temperature %.4g fitted on %d rows of %s (log loss %.4f -> %.4f)", out, temperature,
                len(rows), fitted_on, result.log_loss_uncalibrated, result.log_loss_calibrated)
    return result


def _write_checkpoint(out: Path, artifact: ModelArtifact, temperature: float, calibration: Dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, dataclasses.replace(artifact, temperature=float(temperature), calibration=calibration))
