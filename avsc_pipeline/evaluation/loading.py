"""Loading what `--checkpoint` names, ready to score: one checkpoint (:func:`load_scorer`), or
one or several checkpoints, an ensemble file and test-time augmentation (:func:`load_model`,
:class:`LoadedModel`), as `avsc-eval`, `avsc-predict` and `avsc-calibrate` take them.

A checkpoint becomes a :class:`~.scoring.Scorer`: its model rebuilt from the artifact's recipe,
a batch preparer with the model's own frame statistics and the run's audio statistics, and the
run's precision and memory format, all in one :class:`~avsc_pipeline.inference.Inference`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.stats import AudioStats
from avsc_pipeline.devices import amp_dtype, pick_device
from avsc_pipeline.evaluation.ensemble import (
    Ensemble, EnsembleSpec, is_ensemble_file, normalized_weights, read_ensemble_file,
)
from avsc_pipeline.evaluation.scoring import Scorer, ScorerLike
from avsc_pipeline.inference import Inference
from avsc_pipeline.models.checkpoint import ModelArtifact, load_checkpoint, model_from_artifact
from avsc_pipeline.models.classifier import SceneClassifier
from avsc_pipeline.sections.model import MODALITIES

logger = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


def load_scorer(ckpt_path: "str | os.PathLike[str]", device: "str | torch.device" = "auto",
                modality: Optional[str] = None, calibrated: bool = True) -> Tuple[Scorer, ModelArtifact]:
    """Read a checkpoint and build its :class:`Scorer`.

    Args:
        ckpt_path: a checkpoint written by the trainer (`best.pt`, `last.pt`).
        device: `auto`, `cpu`, `cuda`, `cuda:N` or a torch.device.
        modality: None (the model's own), or `audio`/`video` for one modality of a joint
            checkpoint with stored `embedding_means`.
        calibrated: divide the logits by the checkpoint's temperature (fitted on the run's
            validation rows); False scores them as the model gives them.

    Returns:
        The scorer (in eval mode) and the checkpoint's artifact.

    Raises:
        CheckpointError: a missing, truncated, corrupt or foreign file (one line naming it).
        ValueError: a modality the checkpoint cannot give, or a device that is not there.
    """
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"expected modality in {MODALITIES}, got {modality!r}")
    device = device if isinstance(device, torch.device) else pick_device(device)
    artifact = load_checkpoint(ckpt_path, map_location="cpu").artifact
    model = model_from_artifact(artifact, device)
    source = str(ckpt_path)
    scored = modality or model.modality
    stand_ins = _stand_ins(artifact, model, scored, source)
    stats = _audio_stats(artifact, model, source)
    recipe = artifact.recipe
    preparer = BatchPreparer(len(artifact.classes), stats, (model.frame_mean, model.frame_std),
                             features=recipe.features).to(device).eval()
    # The layout and precision training validated with: one policy for both.
    inference = Inference(model, preparer, device, amp_dtype(recipe.train.amp, device),
                          channels_last=recipe.train.channels_last)
    scorer = Scorer(inference, list(artifact.classes), recipe.features, scored,
                    stand_ins={k: v.to(device) for k, v in stand_ins.items()},
                    temperature=artifact.temperature if calibrated else 1.0)
    return scorer, artifact


def _stand_ins(artifact: ModelArtifact, model: SceneClassifier, modality: str,
               source: str) -> Dict[str, torch.Tensor]:
    """The stored mean embedding of the modality that `modality` drops (none for the model's own)."""
    if modality == model.modality:
        return {}
    if model.modality != "joint":
        raise ValueError(
            f"{source}: --modality {modality} needs a joint checkpoint, got an {model.modality} model "
            f"(score it with --modality {model.modality})"
        )
    if modality == "joint":
        return {}
    dropped = "video" if modality == "audio" else "audio"
    means = artifact.embedding_means or {}
    mean = means.get(dropped) if isinstance(means, dict) else None
    if mean is None:
        raise ValueError(
            f"{source}: --modality {modality} needs the training-set mean {dropped} embedding, "
            f"got none in the checkpoint (embedding_means is stored with every checkpoint of a joint run)"
        )
    width = (model.video if dropped == "video" else model.audio).embed_dim
    if not isinstance(mean, torch.Tensor) or tuple(mean.shape) != (width,):
        raise ValueError(
            f"{source}: expected embedding_means[{dropped!r}] of shape ({width},), got "
            f"{tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__}"
        )
    return {dropped: mean.detach().to(torch.float32)}


def _audio_stats(artifact: ModelArtifact, model: SceneClassifier, source: str) -> Optional[AudioStats]:
    """The statistics the run standardized its audio with, or None when it fed the features as
    stored (`loader.audio_normalize: none`) or the model reads no audio."""
    if artifact.audio_stats is not None:
        return AudioStats.from_json(artifact.audio_stats, f"{source}: audio_stats")
    loader = artifact.recipe.loader
    if model.uses_audio and loader.audio_normalize == "standardize":
        raise ValueError(f"{source}: expected audio_stats for a {model.modality!r} checkpoint that standardizes its "
                         "audio, got None")
    return None


@dataclass
class LoadedModel:
    """What `--checkpoint` (one or several, or an ensemble file) stands for, loaded.

    Attributes:
        scorer: a :class:`Scorer` (one checkpoint), an :class:`Ensemble`, or either wrapped in a
            :class:`~.tta.TTAScorer`.
        artifacts: each member's checkpoint artifact.
        sources: each member's checkpoint path.
        members: each member's scorer.
        weights: the normalized member weights.
        mean: how members are combined.
        temperature: the ensemble's own temperature (a single checkpoint's is its scorer's).
        ensemble_file: the ensemble file read, or None.
        tta: the test-time transforms averaged over.
        calibrated: whether the temperatures are applied.
    """

    scorer: ScorerLike
    artifacts: List[ModelArtifact]
    sources: List[Path]
    members: List[Scorer]
    weights: Tuple[float, ...]
    mean: str = "arithmetic"
    temperature: float = 1.0
    ensemble_file: Optional[Path] = None
    tta: Tuple[str, ...] = field(default_factory=tuple)
    calibrated: bool = True

    @property
    def is_ensemble(self) -> bool:
        """Several members, or an ensemble file (which may hold one checkpoint)."""
        return len(self.members) > 1 or self.ensemble_file is not None

    def members_info(self) -> List[Dict[str, Any]]:
        """One JSON-ready record per member: checkpoint, run, epoch, weight, temperature and how
        training decided it (`calibration`)."""
        return [{"checkpoint": str(Path(src).resolve()), "run": Path(src).resolve().parent.name,
                 "epoch": artifact.epoch, "weight": weight, "temperature": member.temperature,
                 "modality": member.modality, "calibration": artifact.calibration}
                for src, artifact, weight, member in zip(self.sources, self.artifacts, self.weights, self.members)]


def resolve_members(checkpoints: Sequence[PathLike], weights: Optional[Sequence[float]] = None,
                    mean: Optional[str] = None) -> Tuple[List[Path], Optional[EnsembleSpec], Optional[Path]]:
    """The member checkpoints that `--checkpoint` values name, and the ensemble file's spec.

    Returns:
        `(paths, spec, ensemble_file)`: with an ensemble file, its members and spec; else the
        paths given, a spec of the given weights and mean (None for one checkpoint without
        them), and None.

    Raises:
        ValueError: an ensemble file among other checkpoints, `--weights` or `--mean` with an
            ensemble file, or a weight list of the wrong length.
    """
    paths = [Path(c) for c in checkpoints]
    if not paths:
        raise ValueError("--checkpoint: expected at least one checkpoint, got none")
    files = [p for p in paths if is_ensemble_file(p)]
    if files:
        if len(paths) > 1:
            raise ValueError(f"--checkpoint {files[0]}: an ensemble file stands alone, got {len(paths) - 1} "
                             "other --checkpoint value(s) with it")
        if weights is not None or mean is not None:
            option = "--weights" if weights is not None else "--mean"
            raise ValueError(f"{option}: {files[0]} fixes its members' weights and mean (its temperature was "
                             f"fitted with them); write a new ensemble with avsc-calibrate to change them")
        spec = read_ensemble_file(files[0])
        return [Path(c) for c in spec.checkpoints], spec, files[0]
    normalized = normalized_weights(weights, len(paths))
    spec = EnsembleSpec(tuple(str(p) for p in paths), normalized, mean or "arithmetic")
    return paths, spec, None


def load_model(checkpoints: Sequence[PathLike], device: "str | torch.device" = "auto", modality: Optional[str] = None,
               calibrated: bool = True, weights: Optional[Sequence[float]] = None, mean: Optional[str] = None,
               tta: Sequence[str] = ()) -> LoadedModel:
    """Load one checkpoint, several as an ensemble, or an ensemble file, ready to score.

    Args:
        checkpoints: `--checkpoint` values: checkpoint files, or one ensemble file.
        device: `auto`, `cpu`, `cuda`, `cuda:N` or a torch.device (one for every member).
        modality: None, or `audio`/`video`: one modality of every (joint) member.
        calibrated: apply the checkpoints' and the ensemble's temperatures; False scores the
            probabilities the models give.
        weights: one weight per checkpoint (None: equal).
        mean: `arithmetic` (default) or `geometric`.
        tta: test-time transforms (:data:`~.tta.TTA_TRANSFORMS`); empty for none.

    Raises:
        CheckpointError: an unreadable checkpoint (naming it).
        ValueError: see :func:`resolve_members`, :func:`check_compatible` and :class:`~.tta.TTAScorer`.
    """
    from avsc_pipeline.evaluation.tta import TTAScorer

    paths, spec, ensemble_file = resolve_members(checkpoints, weights, mean)
    device = device if isinstance(device, torch.device) else pick_device(device)
    loaded = [load_scorer(p, device, modality, calibrated) for p in paths]
    members, artifacts = [m for m, _ in loaded], [a for _, a in loaded]
    temperature = spec.temperature if calibrated else 1.0
    if ensemble_file is not None:
        _warn_if_stale(ensemble_file, spec, artifacts)
    if len(members) == 1 and ensemble_file is None:
        scorer: ScorerLike = members[0]
    else:
        scorer = Ensemble(members, [str(p) for p in paths], spec.weights or None, spec.mean, temperature)
    if tta:
        scorer = TTAScorer(scorer, tta)
    return LoadedModel(scorer, artifacts, paths, members, normalized_weights(spec.weights or None, len(paths)),
                       spec.mean, temperature, ensemble_file, tuple(scorer.transforms), calibrated)


def _warn_if_stale(path: Path, spec: EnsembleSpec, artifacts: Sequence[ModelArtifact]) -> None:
    """Warn when a member's temperature is not the one the ensemble's was fitted with."""
    for member, then, artifact in zip(spec.checkpoints, spec.member_temperatures, artifacts):
        if abs(float(then) - float(artifact.temperature)) > 1e-9:
            logger.warning("%s: member %s has temperature %.4g now, %.4g when the ensemble's was fitted; "
                           "refit it with avsc-calibrate", path, member, artifact.temperature, then)
