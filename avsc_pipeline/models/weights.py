"""Loading pre-trained weights from a local file into a video backbone.

Accepts the Places365 release format (`densenet161_places365.pth.tar`,
`resnet50_places365.pth.tar`: `{"epoch", "arch", "state_dict", "best_prec1"}` with
`module.`-prefixed keys, old-style DenseNet layer names and a 365-class head), plain state
dicts, e.g. torchvision's own `.pth` files or a timm model's saved `state_dict()`, a dict
holding one under "model" (PANNs' release, read by :mod:`.cnn14`), and `.safetensors` files
(timm's files on the Hugging Face hub). Every backbone tensor must be matched with the right
shape; anything else is an error that names the file and the tensors.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from typing import Dict, List, Tuple, Union

import torch
from torch import Tensor, nn

from avsc_pipeline.errors import not_found

from .video import BackboneSpec

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# torchvision.models.densenet._load_state_dict's pattern: '.'s are no longer allowed in module
# names, but old _DenseLayer checkpoints have 'norm.1', 'relu.1', 'conv.1', 'norm.2', ...
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_MAX_LISTED = 20


def load_weights_file(path: PathLike, allow_unsafe: bool = False,
                      unsafe_field: str = "model.video_weights_unsafe") -> Dict[str, Tensor]:
    """Read a weights file into a state dict (not yet key-normalized).

    Args:
        path: a `torch.save`d state dict, or a dict holding one under "state_dict" or "model";
            or a `.safetensors` file.
        allow_unsafe: use the full unpickler (`weights_only=False`) for trusted legacy pickles.
        unsafe_field: the config field that sets `allow_unsafe`, named in the refusal.

    Returns:
        The state dict, name -> tensor.

    Raises:
        ValueError: one line naming the path: missing, unreadable, truncated or corrupt file, a
            file that needs the full unpickler while `allow_unsafe` is False, or no state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(not_found(path, "weights file"))
    if path.endswith(".safetensors"):
        return _state_dict_of(_load_safetensors(path), path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as err:
        if needs_full_unpickler(err):
            raise ValueError(
                f"{path}: needs the full unpickler (a legacy pickle); "
                f"set {unsafe_field}: true if you trust this file"
            ) from None
        raise ValueError(f"{path}: corrupt weights file (not a torch.save pickle)") from None
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised below as a one-line error
        # A damaged pickle fails in the unpickler with almost any exception type (KeyError,
        # IndexError, UnicodeDecodeError, ...); all mean the same thing: an unreadable file.
        problem = f"unreadable or truncated weights file ({describe_error(err)})"
        raise ValueError(f"{path}: {problem}") from None
    return _state_dict_of(obj, path)


def needs_full_unpickler(err: BaseException) -> bool:
    """Whether torch's weights_only unpickler refused a valid pickle (not garbage bytes)."""
    text = str(err)
    return "Weights only load failed" in text and "Unsupported operand" not in text


def describe_error(err: BaseException) -> str:
    """`Type: first sentence of the message`, to keep a file error on one line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0].split('. ')[0]}" if text else type(err).__name__


def _load_safetensors(path: str) -> Dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(f"{path}: reading .safetensors needs the safetensors package "
                         "(pip install safetensors; timm brings it)") from None
    try:
        return load_file(path, device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types; one line here
        raise ValueError(f"{path}: unreadable or truncated safetensors file ({describe_error(err)})") from None


def _state_dict_of(obj: object, path: str) -> Dict[str, Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # PANNs' release: {"model": ...}
        obj = obj["model"]
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj:
        raise ValueError(
            f"{path}: expected a state dict or a dict with 'state_dict' or 'model', got {type(obj).__name__}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"{path}: expected a state dict of name -> tensor, got non-tensors: {_listed(bad)}"
        )
    return dict(obj)


def normalize_keys(
    state: Dict[str, Tensor], head_prefixes: Tuple[str, ...] = ()
) -> Dict[str, Tensor]:
    """Map a weight file's keys onto torchvision's names.

    Strips a leading "module." (DataParallel) per key, renames old DenseNet layer keys
    (`denselayer1.norm.1.weight` -> `denselayer1.norm1.weight`, exactly as torchvision does), and
    drops classifier keys under `head_prefixes`.

    Args:
        state: name -> tensor.
        head_prefixes: key prefixes of the classifier head to drop, e.g. ("classifier.",).

    Returns:
        A new dict, name -> tensor.
    """
    out: Dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        match = _OLD_DENSENET_KEY.match(key)
        if match:
            key = match.group(1) + match.group(2)
        if any(key.startswith(prefix) for prefix in head_prefixes):
            continue
        out[key] = value
    return out


def match_state_dict(
    module: nn.Module, state: Dict[str, Tensor]
) -> Tuple[List[str], List[str], List[str]]:
    """Compare a (normalized) state dict with a module's own.

    Missing `num_batches_tracked` buffers are not counted (files before torch 0.4.1 lack them).

    Returns:
        `(missing, unexpected, mismatched)` key lists; mismatched entries read
        "name: file (a, b) != model (c, d)".
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} != model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    return missing, unexpected, mismatched


def load_backbone_weights(
    backbone: nn.Module, spec: BackboneSpec, path: PathLike, allow_unsafe: bool = False
) -> int:
    """Load a local weights file into a video backbone, checking that every tensor matches.

    Args:
        backbone: the module from :func:`~avsc_pipeline.models.video.build_backbone`.
        spec: its spec (which classifier keys to drop).
        path: the weights file.
        allow_unsafe: allow the full unpickler for a trusted legacy pickle.

    Returns:
        The number of tensors loaded.

    Raises:
        ValueError: naming the file and every missing or shape-mismatched backbone tensor.
    """
    path = os.fspath(path)
    state = load_weights_file(path, allow_unsafe)
    if spec.convert is not None:
        state = spec.convert(state, backbone)
    state = normalize_keys(state, spec.head_prefixes)
    missing, unexpected, mismatched = match_state_dict(backbone, state)
    if unexpected:
        logger.warning("%s: %d tensor(s) not in the backbone, ignored: %s",
                       path, len(unexpected), _listed(unexpected))
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} backbone tensor(s) missing from the file: {_listed(missing)}"
            )
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensor(s): {_listed(unexpected)}")
        raise ValueError(f"{path}: does not fit the video backbone; " + "; ".join(problems))
    loadable = {k: v for k, v in state.items() if k not in unexpected}
    # strict=False only for num_batches_tracked buffers the file lacks (checked above).
    backbone.load_state_dict(loadable, strict=False)
    logger.info("loaded %d tensors into the video backbone from %s", len(loadable), path)
    return len(loadable)


def _listed(names: List[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return f"{shown} (and {more} more)" if more > 0 else shown
