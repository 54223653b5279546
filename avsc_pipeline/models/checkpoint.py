"""The checkpoint file format shared by training and evaluation (which must not need the trainer).

A checkpoint is a `torch.save`d dict that `torch.load(weights_only=True)` can read (tensors,
dicts, lists, tuples, str, int, float, bool, None only) holding at least:

    format           "avsc-pipeline-checkpoint"
    format_version   1
    model            the SceneClassifier's state_dict
    config           every resolved YAML section, e.g. {"model": {...}, "train": {...}}
    stage            "audio", "video" or "joint"
    classes          class names, list of str (the logits' order)
    feature_config   the stage-one FeatureConfig as a dict
    audio_stats      {"mean": [...], "std": [...], ...} or None
    embedding_means  {"audio": Tensor | None, "video": Tensor | None} or None
    epoch, step      int

and whatever the trainer adds (optimizer, scheduler, scaler and RNG states).
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict, Iterable, Union

import torch
from torch import Tensor

from ..config import from_dict
from .classifier import SceneClassifier, build_model
from .config import STAGES, ModelConfig
from .weights import describe_error, needs_full_unpickler

FORMAT = "avsc-pipeline-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format", "format_version", "model", "config", "stage", "classes", "feature_config",
    "audio_stats", "embedding_means", "epoch", "step",
)
_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP/DataParallel wrappers
_SAFE_LEAVES = (Tensor, str, bytes, int, float, bool, type(None), torch.dtype, torch.device)

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A file that is not a readable avsc-pipeline checkpoint; the message is one line."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> None:
    """Write a checkpoint atomically (a temporary file in the same folder, fsync, rename).

    Args:
        state: a dict with at least `REQUIRED_KEYS`; "format" and "format_version" are filled
            in when absent. Every value must be weights_only-loadable.
        path: destination; its folder must exist.

    Raises:
        ValueError: a required key is missing or "format" is another format.
        TypeError: a value that `torch.load(weights_only=True)` would refuse, with its key path.
    """
    if not isinstance(state, dict):
        raise TypeError(f"expected a checkpoint dict, got {type(state).__name__}")
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    if state["format"] != FORMAT:
        raise ValueError(f"expected format {FORMAT!r}, got {state['format']!r}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"expected checkpoint keys {list(REQUIRED_KEYS)}, missing {missing}")
    check_weights_only_safe(state)
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read and check a checkpoint.

    Args:
        path: a file written by :func:`save_checkpoint`.
        map_location: passed to `torch.load`.

    Returns:
        The checkpoint dict.

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
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
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
    _check_checkpoint(ckpt, path)
    return ckpt


def _check_checkpoint(ckpt: Any, path: str) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            path, f"not an avsc-pipeline checkpoint (format {found!r}, expected {FORMAT!r})"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(path, f"expected format_version 1..{FORMAT_VERSION}, got {version!r}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(path, f"incomplete checkpoint, missing keys {missing}")
    if ckpt["stage"] not in STAGES:
        raise CheckpointError(path, f"expected stage in {STAGES}, got {ckpt['stage']!r}")
    classes = ckpt["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(
            path, f"expected classes to be a non-empty list of str, got {classes!r}"
        )
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["config"].get("model"), dict):
        raise CheckpointError(path, "expected config to hold a 'model' section")


def strip_prefixes(
    state: Dict[str, Tensor], prefixes: Iterable[str] = _PREFIXES
) -> Dict[str, Tensor]:
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


def model_from_checkpoint(ckpt: Dict[str, Any], device: Any = "cpu") -> SceneClassifier:
    """Rebuild the checkpoint's model with its weights, in eval mode.

    Args:
        ckpt: a dict from :func:`load_checkpoint`.
        device: where to put the model.

    Returns:
        The :class:`SceneClassifier`, weights loaded strictly, in eval mode.
    """
    config = from_dict(ModelConfig, ckpt["config"]["model"], source="checkpoint config.model")
    state = strip_prefixes(ckpt["model"])
    in_bn = state.get("audio.input_bn.weight")
    channels = int(in_bn.shape[0]) if in_bn is not None else 6
    model = build_model(config, ckpt["stage"], len(ckpt["classes"]), audio_channels=channels,
                        load_weights=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint weights do not fit its config.model: {err}") from None
    return model.to(device).eval()
