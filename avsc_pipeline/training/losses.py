"""Losses of stage two: cross-entropy against soft (mixup) targets or integer labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avsc_pipeline.errors import describe


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                              reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against soft targets (mixup), or against integer labels.

    Args:
        logits: `(B, K)` floating point.
        target: `(B, K)` floating point rows (each summing to one) or `(B,)` int64 labels.
        reduction: `"mean"`, `"sum"` or `"none"`.

    Returns:
        The loss: a scalar, or `(B,)` for `reduction="none"`.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise TypeError(f"expected (B, K) floating point logits, got {describe(logits)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"expected reduction 'mean', 'sum' or 'none', got {reduction!r}")
    if isinstance(target, torch.Tensor) and not target.is_floating_point():
        return F.cross_entropy(logits, target.long(), reduction=reduction)
    if not isinstance(target, torch.Tensor) or target.shape != logits.shape:
        raise ValueError(f"expected targets of shape {tuple(logits.shape)}, got {describe(target)}")
    loss = -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()


class SoftTargetCrossEntropy(torch.nn.Module):
    """:func:`soft_target_cross_entropy` as a module."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"expected reduction 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of a batch.

        Args:
            logits: `(B, K)` floating point.
            target: `(B, K)` floating point soft targets or `(B,)` int64 labels.

        Returns:
            The loss (a scalar unless `reduction="none"`).
        """
        return soft_target_cross_entropy(logits, target, self.reduction)
