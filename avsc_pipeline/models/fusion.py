"""The MLP classification head used on E_V (video stage) and on E_F = [E_A, E_V] (joint stage)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


class MLPHead(nn.Sequential):
    """`Linear -> ReLU -> Dropout` per hidden width, then `Linear` to the classes.

    A nonlinearity sits between every pair of Linear layers: the official DCASE 2021 1b baseline
    had `Linear -> Linear`, which collapses into a single linear map.

    Args:
        in_dim: input embedding width (e.g. 2208 for E_V of DenseNet-161, 2218 for E_F).
        hidden: hidden widths, e.g. (512, 128, 64); empty means one Linear layer.
        num_classes: output width.
        dropout: dropout probability after each hidden ReLU.
    """

    def __init__(
        self, in_dim: int, hidden: Sequence[int] = (512, 128, 64), num_classes: int = 10,
        dropout: float = 0.2,
    ) -> None:
        if in_dim < 1 or num_classes < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"expected positive in_dim, hidden widths and num_classes, "
                f"got {in_dim}, {tuple(hidden)}, {num_classes}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {dropout}")
        layers = []
        width = in_dim
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = out
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        """`(B, in_dim)` float embeddings -> `(B, num_classes)` logits."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"expected an embedding of shape (B, {self.in_dim}), got {tuple(x.shape)}"
            )
        return super().forward(x)
