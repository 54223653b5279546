"""Choosing the compute device at run time (training, evaluation and prediction alike)."""

from __future__ import annotations

import torch

from avsc_pipeline.sections.train import AMP_MODES


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> CUDA (this process's local GPU) when available, else CPU; or the named device.

    Args:
        name: `auto`, `cpu`, `cuda` or `cuda:N`.
        local_rank: the GPU of this process for `auto` and a bare `cuda` (torchrun's LOCAL_RANK).

    Raises:
        ValueError: an unknown name, or CUDA asked for where there is none.
    """
    if not isinstance(name, str):
        raise TypeError(f"expected a device name (str), got {type(name).__name__}")
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"expected device auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"expected device auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


#: `train.amp` values: `auto` (bf16 where the GPU supports it, else fp16), `off`, `bf16`, `fp16`.


def amp_dtype(mode: str, device: torch.device) -> "torch.dtype | None":
    """The autocast dtype of `train.amp` on `device`: the one precision policy of training,
    validation, evaluation and prediction (None: float32, as on the CPU)."""
    if mode not in AMP_MODES:
        raise ValueError(f"expected amp in {AMP_MODES}, got {mode!r}")
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: "torch.dtype | None"):
    """`torch.autocast` for `dtype` on `device`, or a no-op context for None."""
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
