"""The checkpoint: one typed artifact for scoring, one resume state beside it, one writer.

A checkpoint file is a `torch.save`d dict that `torch.load(weights_only=True)` reads (tensors,
dicts, lists, tuples, str, int, float, bool, None only)::

    format           "avsc-pipeline-checkpoint"
    format_version   3
    artifact         ModelArtifact as a dict: what evaluation and prediction need
    resume           ResumeState as a dict (training's `last.pt` and `best.pt`), or None

:func:`save_checkpoint` is the one writer (trainer and tests alike), atomically;
:func:`load_checkpoint` the one reader, which migrates older formats on purpose, one function per
version: format 1 (the flat dict of earlier versions) and format 2 (whose config sections left out
the fields added with the authors' definitions when they held the earlier values). Evaluation
needs only the artifact, never the trainer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import Tensor

from ..atomic import atomic_open

from .classifier import SceneClassifier, build_model
from avsc_pipeline import earlier
from avsc_pipeline.sections import Recipe
from avsc_pipeline.sections.model import MODALITIES
from .weights import describe_error, needs_full_unpickler

FORMAT = "avsc-pipeline-checkpoint"
FORMAT_VERSION = 3
# Format 2 wrote a section without these keys when all of them held these values (the
# definitions before the keys existed); format 3 writes every key.
_FORMAT_2_OMITTED = {"features": earlier.FEATURES, "offline_augment": earlier.OFFLINE_AUGMENT,
                     "loader": earlier.LOADER}
_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP/DataParallel wrappers
_SAFE_LEAVES = (Tensor, str, bytes, int, float, bool, type(None), torch.dtype, torch.device)

PathLike = Union[str, "os.PathLike[str]"]
logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A file that is not a readable avsc-pipeline checkpoint; the message is one line."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class ModelArtifact:
    """Everything that scoring a model needs, and nothing of the training run's state.

    Attributes:
        weights: the :class:`SceneClassifier`'s state dict (no wrapper prefixes).
        classes: the C class names, in the logits' order.
        config: the run's :class:`~avsc_pipeline.sections.Recipe` as a dict
            (`Recipe.to_dict`, read back by :attr:`recipe`); `config["model"]` builds the model
            and `config["features"]` is the feature config of the shards the run read (the one
            place a checkpoint holds it).
        audio_stats: the per-channel audio statistics the run normalized with (a dict of
            `AudioStats.to_json`), or None for a video model.
        embedding_means: the training-set mean embeddings `{"audio": (D_A,), "video": (D_V,)}`
            float32 of a joint model (one modality's stand-in when the other is scored alone),
            or None.
        epoch: the epochs trained when it was written.
        temperature: the calibration temperature the logits are divided by (1.0: none).
        calibration: how training decided the temperature (the dict of
            :class:`~avsc_pipeline.evaluation.temperature.TemperatureDecision`: `temperature`,
            `fitted`, `reason` and the leave-one-location-out figures), or None (a checkpoint
            written before the decision was recorded, or not calibrated by training).
    """

    weights: Dict[str, Tensor]
    classes: List[str]
    config: Dict[str, Dict[str, Any]]
    audio_stats: Optional[Dict[str, Any]] = None
    embedding_means: Optional[Dict[str, Tensor]] = None
    epoch: int = 0
    temperature: float = 1.0
    calibration: Optional[Dict[str, Any]] = None

    @property
    def modality(self) -> str:
        """`audio`, `video` or `joint`: what the model classifies from."""
        return self.config["model"].get("modality", "joint")

    @property
    def feature_config(self) -> Dict[str, Any]:
        """The feature config (as a dict) of the shards the model was trained on."""
        return self.config.get("features") or {}

    @property
    def recipe(self) -> Recipe:
        """:attr:`config` read back into the run's typed :class:`~avsc_pipeline.sections.Recipe`
        (`offline_augment` is None when the run read no offline-augmented shards).

        Raises:
            ValueError: a section or value the recipe does not know, named.
        """
        return Recipe.from_dict(self.config, source="checkpoint config", absent=("offline_augment",))


@dataclass
class ResumeState:
    """What continuing a training run exactly needs beyond the artifact.

    Attributes:
        epoch: epochs finished.
        step: optimizer steps taken.
        epoch_batches: batches of the current epoch already trained (a mid-epoch stop).
        optimizer: the optimizer's `state_dict()`.
        scheduler: the schedule's `state_dict()`.
        scaler: the gradient scaler's `state_dict()`.
        preparer: the batch preparer's generator states, keyed by rank.
        rng: the process-wide generator states (see `training.rng_state`), keyed by rank.
        sampler: the epoch sampler's seed and epoch.
        history: one metrics row per finished epoch.
        best: the best epoch's figures, or None.
    """

    epoch: int
    step: int
    epoch_batches: int
    optimizer: Dict[str, Any]
    scheduler: Dict[str, Any]
    scaler: Dict[str, Any]
    preparer: Dict[str, Any]
    rng: Dict[str, Any]
    sampler: Dict[str, Any]
    history: List[Dict[str, Any]] = field(default_factory=list)
    best: Optional[Dict[str, Any]] = None


@dataclass
class Checkpoint:
    """A checkpoint as read: the artifact, and the resume state when the file has one."""

    artifact: ModelArtifact
    resume: Optional[ResumeState] = None


def save_checkpoint(path: PathLike, artifact: ModelArtifact, resume: Optional[ResumeState] = None) -> None:
    """Write a checkpoint atomically (a temporary file in the same folder, fsync, rename).

    Args:
        path: destination; its folder must exist.
        artifact: what scoring needs.
        resume: what continuing the run needs (None for a scoring-only file).

    Raises:
        TypeError: a value that `torch.load(weights_only=True)` would refuse, with its key path.
        CheckpointError: an artifact without a `model` section or classes.
    """
    if not isinstance(artifact, ModelArtifact):
        raise TypeError(f"expected a ModelArtifact, got {type(artifact).__name__}")
    if resume is not None and not isinstance(resume, ResumeState):
        raise TypeError(f"expected a ResumeState or None, got {type(resume).__name__}")
    fields = {f.name: getattr(artifact, f.name) for f in dataclasses.fields(ModelArtifact)}
    fields["weights"] = strip_prefixes(artifact.weights)
    _check_artifact(fields, os.fspath(path))
    resume_fields = None if resume is None else {f.name: getattr(resume, f.name) for f in dataclasses.fields(resume)}
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "artifact": fields, "resume": resume_fields}
    check_weights_only_safe(state)
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def check_weights_only_safe(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value `torch.load(weights_only=True)` would refuse."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: expected str or int keys, got {type(key).__name__}")
            check_weights_only_safe(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        for index, value in enumerate(obj):
            check_weights_only_safe(value, f"{where}[{index}]")
    elif not isinstance(obj, _SAFE_LEAVES + (torch.Size,)):
        raise TypeError(
            f"{where}: expected tensors, containers and plain Python values "
            f"(weights_only-loadable), got {type(obj).__module__}.{type(obj).__name__}"
        )


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Checkpoint:
    """Read and check a checkpoint.

    Args:
        path: a file written by :func:`save_checkpoint` (format 2), or a format-1 file.
        map_location: passed to `torch.load`.

    Returns:
        The :class:`Checkpoint`: its artifact and, where the file holds one, its resume state.

    Raises:
        CheckpointError: "<path>: <problem>" for a missing, empty, truncated or corrupt file,
            or a file that is not an avsc-pipeline checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(path, "checkpoint not found")
    if os.path.getsize(path) == 0:
        raise CheckpointError(path, "empty file (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if needs_full_unpickler(err):
            raise CheckpointError(
                path, "not an avsc-pipeline checkpoint (holds objects that need the full unpickler)"
            ) from None
        raise CheckpointError(path, "corrupt file (not a torch.save pickle)") from None
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised below as a one-line error
        # A damaged pickle fails in the unpickler with almost any exception type (KeyError,
        # IndexError, UnicodeDecodeError, ...); all mean the same thing: an unreadable file.
        raise CheckpointError(path, f"truncated or corrupt file ({describe_error(err)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(path, f"not an avsc-pipeline checkpoint (format {found!r}, expected {FORMAT!r})")
    version = state.get("format_version")
    if version == 1:
        state = _from_format_2(_from_format_1(state, path), path)
    elif version == 2:
        state = _from_format_2(state, path)
    elif version != FORMAT_VERSION:
        raise CheckpointError(path, f"expected format_version 1..{FORMAT_VERSION}, got {version!r}")
    artifact = state.get("artifact")
    _check_artifact(artifact, path)
    names = {f.name for f in dataclasses.fields(ModelArtifact)}
    unknown = sorted(set(artifact) - names)
    if unknown:
        raise CheckpointError(path, f"unknown artifact field(s) {unknown}")
    resume = state.get("resume")
    if resume is not None:
        try:
            resume = ResumeState(**resume)
        except TypeError as err:
            raise CheckpointError(path, f"unreadable resume state ({err})") from None
    return Checkpoint(ModelArtifact(**artifact), resume)


def _check_artifact(artifact: Any, path: str) -> None:
    if not isinstance(artifact, dict):
        raise CheckpointError(path, "incomplete checkpoint, no artifact")
    missing = [k for k in ("weights", "classes", "config") if k not in artifact]
    if missing:
        raise CheckpointError(path, f"incomplete checkpoint, missing keys {missing}")
    classes = artifact["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(path, f"expected classes to be a non-empty list of str, got {classes!r}")
    config = artifact["config"]
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(path, "expected config to hold a 'model' section")
    modality = config["model"].get("modality", "joint")
    if modality not in MODALITIES:
        raise CheckpointError(path, f"expected model.modality in {MODALITIES}, got {modality!r}")


def _from_format_1(state: Dict[str, Any], path: str) -> Dict[str, Any]:
    """A format-1 checkpoint (one flat dict; `stage` for the modality) as format 2."""
    missing = [k for k in ("model", "config", "stage", "classes", "feature_config") if k not in state]
    if missing:
        raise CheckpointError(path, f"incomplete checkpoint, missing keys {missing}")
    config = {name: dict(section) for name, section in state["config"].items() if isinstance(section, dict)}
    config.setdefault("model", {})["modality"] = state["stage"]
    config.get("train", {}).pop("stage", None)
    config["features"] = state["feature_config"]
    artifact = {"weights": state["model"], "classes": state["classes"], "config": config,
                "audio_stats": state.get("audio_stats"), "embedding_means": state.get("embedding_means"),
                "epoch": int(state.get("epoch", 0))}
    return {"artifact": artifact, "resume": None}


def _from_format_2(state: Dict[str, Any], path: str) -> Dict[str, Any]:
    """A format-2 checkpoint as format 3: a config section that holds none of the keys format 2
    left out gets their earlier values (what the section meant when it was written)."""
    artifact = state.get("artifact")
    if not isinstance(artifact, dict) or not isinstance(artifact.get("config"), dict):
        return state
    config = dict(artifact["config"])
    for name, keys in earlier.DROPPED.items():
        if isinstance(config.get(name), dict):
            config[name] = {k: v for k, v in config[name].items() if k not in keys}
    for name, omitted in _FORMAT_2_OMITTED.items():
        section = config.get(name)
        if isinstance(section, dict) and section and not set(section) & set(omitted):
            config[name] = {**section, **omitted}
            logger.info("%s: format-2 config.%s migrated (%s)", path, name,
                        ", ".join(f"{k}={v!r}" for k, v in omitted.items()))
    return {**state, "artifact": {**artifact, "config": config}}


def strip_prefixes(state: Dict[str, Tensor], prefixes: Iterable[str] = _PREFIXES) -> Dict[str, Tensor]:
    """Remove leading wrapper prefixes ("_orig_mod." from torch.compile, "module." from DDP)."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def model_from_artifact(artifact: ModelArtifact, device: Any = "cpu") -> SceneClassifier:
    """Rebuild the artifact's model with its weights, in eval mode.

    Raises:
        ValueError: weights that do not fit the artifact's `model` section.
    """
    config = artifact.recipe.model
    in_bn = artifact.weights.get("audio.input_bn.weight")
    channels = int(in_bn.shape[0]) if in_bn is not None else 6
    model = build_model(config, len(artifact.classes), audio_channels=channels, load_weights=False)
    try:
        model.load_state_dict(artifact.weights, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint weights do not fit its config.model: {err}") from None
    return model.to(device).eval()
