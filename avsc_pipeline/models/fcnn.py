"""The FCNN audio extractor of Hu et al. (ICASSP 2021), `model_fcnn` in their `fcnn_att.py`.

A fully convolutional network over stacked log-mel/delta/delta-delta maps: an input
BatchNorm, three conv blocks of (2, 2, 4) convs, and a 1x1 class head with channel attention and
global average pooling. Every conv is bias-free, He-normal initialized and followed by
BatchNorm + ReLU, as in the Keras original (BN epsilon 1e-3, momentum 0.99 Keras = 0.01 torch).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsc_pipeline.sections.model import AUDIO_EMBEDDINGS


class ChannelAttention(nn.Module):
    """CBAM-style channel attention: one shared MLP over average- and max-pooled descriptors.

    `out = x * sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))`, with `mlp` = Linear(C, C // ratio)
    -> ReLU -> Linear(C // ratio, C), both with bias and He-normal weights (as the Keras
    `channel_attention(ratio=2)` of the original).

    Args:
        channels: C, the number of input channels.
        ratio: reduction ratio of the hidden layer (at least one hidden unit is kept).
    """

    def __init__(self, channels: int, ratio: int = 2) -> None:
        super().__init__()
        if channels < 1 or ratio < 1:
            raise ValueError(f"expected channels >= 1 and ratio >= 1, got {channels}, {ratio}")
        hidden = max(1, channels // ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel by its attention weight.

        Args:
            x: `(B, C, H, W)` float feature map.

        Returns:
            `(B, C, H, W)`, `x` times a `(B, C, 1, 1)` weight in (0, 1).
        """
        avg = self.mlp(x.mean(dim=(2, 3)))
        peak = self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(avg + peak)[:, :, None, None]


class ConvBNReLU(nn.Sequential):
    """Bias-free conv (He-normal, fan_in) -> BatchNorm2d -> ReLU."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, eps: float, momentum: float
    ) -> None:
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        super().__init__(
            conv, nn.BatchNorm2d(out_ch, eps=eps, momentum=momentum), nn.ReLU(inplace=True)
        )


class FCNN(nn.Module):
    """FCNN with channel-attention head; input `(B, C, F, T)`, e.g. `(B, 6, 128, 39)` float32.

    Shapes for the default 128 x 39 input: block 1 (5x5 stride 2, 3x3, pool) -> 32 x 10,
    block 2 -> 16 x 5, block 3 -> 8 x 2 (max-pools floor odd sizes).

    Args:
        in_channels: C, feature maps per segment (6: log-mel, delta, delta-delta x 2 channels).
        num_classes: width of the class head and of :meth:`forward`'s output.
        widths: channels of blocks 1, 2 and 3.
        dropout: dropout probability after each of the first three convs of block 3.
        embedding: what :meth:`embed` returns, "attention" (the logits) or "block3".
        bn_eps: epsilon of every BatchNorm.
        bn_momentum: torch-convention momentum of every BatchNorm.
    """

    def __init__(
        self,
        in_channels: int = 6,
        num_classes: int = 10,
        widths: Sequence[int] = (144, 288, 576),
        dropout: float = 0.3,
        embedding: str = "attention",
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"expected in_channels >= 1 and num_classes >= 1, got {in_channels}, {num_classes}"
            )
        if len(widths) != 3:
            raise ValueError(f"expected 3 block widths, got {tuple(widths)}")
        if embedding not in AUDIO_EMBEDDINGS:
            raise ValueError(f"expected embedding in {AUDIO_EMBEDDINGS}, got {embedding!r}")
        w1, w2, w3 = (int(w) for w in widths)
        bn = {"eps": bn_eps, "momentum": bn_momentum}
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.widths: Tuple[int, int, int] = (w1, w2, w3)
        self.embedding = embedding
        self.embed_dim = num_classes if embedding == "attention" else w3

        self.input_bn = nn.BatchNorm2d(in_channels, **bn)
        self.block1 = nn.Sequential(
            ConvBNReLU(in_channels, w1, 5, 2, **bn), ConvBNReLU(w1, w1, 3, 1, **bn), nn.MaxPool2d(2)
        )
        self.block2 = nn.Sequential(
            ConvBNReLU(w1, w2, 3, 1, **bn), ConvBNReLU(w2, w2, 3, 1, **bn), nn.MaxPool2d(2)
        )
        self.block3 = nn.Sequential(
            ConvBNReLU(w2, w3, 3, 1, **bn), nn.Dropout(dropout),
            ConvBNReLU(w3, w3, 3, 1, **bn), nn.Dropout(dropout),
            ConvBNReLU(w3, w3, 3, 1, **bn), nn.Dropout(dropout),
            ConvBNReLU(w3, w3, 3, 1, **bn),
            nn.MaxPool2d(2),
        )
        self.head_conv = nn.Conv2d(w3, num_classes, 1, bias=False)
        nn.init.kaiming_normal_(self.head_conv.weight, mode="fan_in", nonlinearity="relu")
        # Two parameter-free BNs around the ReLU, as in the Keras output_path.
        self.head_bn1 = nn.BatchNorm2d(num_classes, affine=False, **bn)
        self.head_bn2 = nn.BatchNorm2d(num_classes, affine=False, **bn)
        self.attention = ChannelAttention(num_classes, ratio=2)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected audio of shape (B, {self.in_channels}, F, T), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"expected floating-point audio features, got {x.dtype}")

    def block3_map(self, x: Tensor) -> Tensor:
        """The block-3 feature map.

        Args:
            x: `(B, C, F, T)` float features.

        Returns:
            `(B, widths[2], F / 16, T / 16)` (floored per pooling), e.g. `(B, 576, 8, 2)`.
        """
        self._check_input(x)
        return self.block3(self.block2(self.block1(self.input_bn(x))))

    def head(self, block3: Tensor) -> Tensor:
        """Class head on a block-3 map: `(B, widths[2], h, w)` -> `(B, num_classes)` logits."""
        x = self.head_bn1(self.head_conv(block3))
        x = self.head_bn2(F.relu(x))
        return self.attention(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (pre-softmax; the Keras model ends in softmax).

        Args:
            x: `(B, C, F, T)` float features, e.g. `(B, 6, 128, 39)` float32.

        Returns:
            `(B, num_classes)` logits.
        """
        return self.head(self.block3_map(x))

    def features(self, x: Tensor) -> Tensor:
        """Globally average-pooled block-3 map: `(B, C, F, T)` -> `(B, widths[2])`."""
        return self.block3_map(x).mean(dim=(2, 3))

    def unused_in_embedding(self) -> List[nn.Module]:
        """The modules :meth:`embed` never runs (the class head behind `block3`): frozen in a
        joint model, so that no parameter is left without a gradient (DDP requires it)."""
        if self.embedding != "block3":
            return []
        return [self.head_conv, self.head_bn1, self.head_bn2, self.attention]

    def embed(self, x: Tensor) -> Tensor:
        """E_A as configured: `(B, C, F, T)` -> `(B, embed_dim)` (logits or pooled block 3)."""
        return self.forward(x) if self.embedding == "attention" else self.features(x)
