"""Video perturbation: RandAugment restricted to Identity, Sharpness and Contrast, whole batches.

The operations, their magnitude scale and the random sign are exactly those of
`torchvision.transforms.v2.RandAugment`: an operation is drawn uniformly from the list, its
magnitude is bin `M` of `linspace(0, 0.9, num_magnitude_bins)` and is negated with probability
0.5, and the image is passed to `adjust_sharpness` / `adjust_contrast` with factor
`1 + magnitude`. `N` operations are applied in turn, with uint8 rounding after each, as
torchvision does.

Every image is drawn independently: the two frames of a sample get their own operations and
signs. They are one second apart and the model sees each through the same backbone, so
independent draws give more variety without breaking a correspondence the model relies on.

Two implementations share the drawn parameters:

- `batched`: all images that draw the same operation at the same step are processed together.
  Sharpness uses an exact integer 3x3 box sum instead of a float convolution (the blurred image
  is rounded to integers in both, and `(box + 4 * centre) / 13` is never half-way between two
  integers, so the rounded values are identical).
- `per_image`: a loop of the torchvision functions themselves.

`auto` picks `batched` on CUDA and `per_image` on CPU: there one image's intermediates stay in
the cache while a batch's do not, and the loop was measured as fast or faster
(`bench/bench_video_augment.py`).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from avsc_pipeline.dataio.config import VIDEO_KERNELS, VIDEO_OPS
from avsc_pipeline.dataio.rng import SeededModule

# Upper end of torchvision's magnitude linspace per operation (None: no magnitude), and whether
# the magnitude takes a random sign; as in torchvision.transforms.v2.RandAugment.
OP_SPACE: Dict[str, Tuple[Optional[float], bool]] = {
    "Identity": (None, False),
    "Sharpness": (0.9, True),
    "Contrast": (0.9, True),
}


def magnitude_of(op: str, magnitude: int, num_bins: int) -> float:
    """The unsigned magnitude torchvision's RandAugment uses for `op` at bin `magnitude`."""
    if op not in OP_SPACE:
        raise ValueError(f"expected an operation in {sorted(OP_SPACE)}, got {op!r}")
    top, _ = OP_SPACE[op]
    if top is None:
        return 0.0
    return float(torch.linspace(0.0, top, num_bins)[magnitude])


def adjust_sharpness_batch(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """`adjust_sharpness` with one factor per image.

    Args:
        images: `(n, C, H, W)` uint8.
        factors: `(n,)` float64 sharpness factors (1 keeps the image).

    Returns:
        `(n, C, H, W)` uint8, equal to torchvision's `adjust_sharpness` per image.
    """
    height, width = images.shape[-2:]
    if images.shape[0] == 0 or height <= 2 or width <= 2:
        return images.clone()
    x = images.to(torch.int16)
    box = x[..., :, :-2] + x[..., :, 1:-1]
    box.add_(x[..., :, 2:])
    box = box[..., :-2, :] + box[..., 1:-1, :] + box[..., 2:, :]
    centre = x[..., 1:-1, 1:-1]
    # round((box + 4 * centre) / 13) in integers (never a tie, see the module docstring), then
    # the difference to the centre that torchvision blends with.
    diff = box.add_(centre, alpha=4).mul_(2).add_(13).div_(26, rounding_mode="floor").sub_(centre)
    alpha = (1.0 - factors).to(torch.float32).view(-1, 1, 1, 1)
    out = images.clone()
    out[..., 1:-1, 1:-1] = diff.to(torch.float32).mul_(alpha).add_(centre).clamp_(0, 255)
    return out


def adjust_contrast_batch(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """`adjust_contrast` with one factor per image.

    Args:
        images: `(n, 3, H, W)` uint8 RGB.
        factors: `(n,)` float64 contrast factors (1 keeps the image).

    Returns:
        `(n, 3, H, W)` uint8: each image blended with the mean of its (floored) grey levels,
        as torchvision's `adjust_contrast`.
    """
    red, green, blue = images.unbind(dim=-3)
    grey = red.mul(0.2989).add_(green, alpha=0.587).add_(blue, alpha=0.114).floor_()
    mean = grey.mean(dim=(-2, -1)).view(-1, 1, 1, 1)
    ratio = factors.to(torch.float32).view(-1, 1, 1, 1)
    rest = (1.0 - factors).to(torch.float32).view(-1, 1, 1, 1)
    return images.mul(ratio).add_(mean * rest).clamp_(0, 255).to(torch.uint8)


_BATCH_KERNELS = {"Sharpness": adjust_sharpness_batch, "Contrast": adjust_contrast_batch}


class VideoRandAugment(SeededModule):
    """RandAugment over {Identity, Sharpness, Contrast} for whole uint8 frame batches.

    Identity in `eval()` mode. Each image (each frame of each sample) draws its own `num_ops`
    operations and signs from the module's generator on the batch's device.

    Args:
        ops: operations drawn from (a subset of `("Identity", "Sharpness", "Contrast")`).
        num_ops: RandAugment N.
        magnitude: RandAugment M, a bin of the `num_magnitude_bins` scale.
        num_magnitude_bins: torchvision's `num_magnitude_bins`.
        kernels: `"batched"`, `"per_image"` or `"auto"` (see the module docstring).
        seed: seed of the module-owned generators.
        generator: a generator to draw from instead.
    """

    def __init__(self, ops: Sequence[str] = VIDEO_OPS, num_ops: int = 2, magnitude: int = 14,
                 num_magnitude_bins: int = 31, kernels: str = "auto", seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(seed, generator)
        ops = tuple(ops)
        if not ops or any(op not in OP_SPACE for op in ops):
            raise ValueError(f"expected a non-empty subset of {VIDEO_OPS}, got {list(ops)}")
        if not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"expected num_ops to be an int >= 0, got {num_ops!r}")
        if not isinstance(magnitude, int) or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"expected 0 <= magnitude < {num_magnitude_bins}, got {magnitude!r}")
        if kernels not in VIDEO_KERNELS:
            raise ValueError(f"expected kernels in {VIDEO_KERNELS}, got {kernels!r}")
        self.ops, self.num_ops, self.magnitude = ops, num_ops, magnitude
        self.num_magnitude_bins, self.kernels = num_magnitude_bins, kernels
        self._magnitudes = [magnitude_of(op, magnitude, num_magnitude_bins) for op in ops]
        self._signed = [OP_SPACE[op][1] for op in ops]

    def extra_repr(self) -> str:
        return (f"ops={list(self.ops)}, num_ops={self.num_ops}, magnitude={self.magnitude}/"
                f"{self.num_magnitude_bins - 1}, drawn per image, kernels={self.kernels!r}, seed={self.seed}")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Perturb a batch of frames.

        Args:
            video: `(B, F, 3, H, W)` or `(B, 3, H, W)` uint8, on any device.

        Returns:
            A new uint8 tensor of the same shape (the input itself in eval mode).
        """
        _check_video(video)
        if not self.training or self.num_ops == 0 or video.numel() == 0:
            return video
        images = video.reshape(-1, *video.shape[-3:])
        op_ids, factors = self.draw(images.shape[0], video.device)
        return self.apply(images, op_ids, factors).view(video.shape)

    def draw(self, n: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Operations and factors for `n` images.

        Returns:
            `(n, num_ops)` int64 indices into `self.ops` and `(n, num_ops)` float64 factors
            (`1 + magnitude`, with the magnitude negated with probability 0.5 for signed ops).
        """
        gen = self.generator_for(device)
        op_ids = torch.randint(len(self.ops), (n, self.num_ops), generator=gen, device=device)
        negate = torch.rand((n, self.num_ops), generator=gen, device=device) <= 0.5
        magnitudes = torch.tensor(self._magnitudes, dtype=torch.float64, device=device)[op_ids]
        signed = torch.tensor(self._signed, dtype=torch.bool, device=device)[op_ids]
        magnitudes = torch.where(negate & signed, -magnitudes, magnitudes)
        return op_ids, 1.0 + magnitudes

    def apply(self, images: torch.Tensor, op_ids: torch.Tensor, factors: torch.Tensor,
              kernels: Optional[str] = None) -> torch.Tensor:
        """Apply drawn operations (deterministic).

        Args:
            images: `(n, 3, H, W)` uint8.
            op_ids: `(n, num_ops)` int64 indices into `self.ops`.
            factors: `(n, num_ops)` float64 factors.
            kernels: overrides the module's kernels.

        Returns:
            `(n, 3, H, W)` uint8.
        """
        _check_video(images)
        if op_ids.shape != (images.shape[0], self.num_ops) or factors.shape != op_ids.shape:
            raise ValueError(
                f"expected op_ids and factors of shape {(images.shape[0], self.num_ops)}, "
                f"got {tuple(op_ids.shape)} and {tuple(factors.shape)}"
            )
        kernels = choose_kernels(kernels or self.kernels, images.device)
        if kernels == "per_image":
            return self._apply_per_image(images, op_ids.cpu().tolist(), factors.cpu().tolist())
        return self._apply_batched(images, op_ids, factors)

    def _apply_batched(self, images: torch.Tensor, op_ids: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        for step in range(self.num_ops):
            for code, op in enumerate(self.ops):
                if op not in _BATCH_KERNELS:
                    continue
                idx = (op_ids[:, step] == code).nonzero().squeeze(1)
                if idx.numel():
                    out[idx] = _BATCH_KERNELS[op](out[idx], factors[idx, step])
        return out

    def _apply_per_image(self, images: torch.Tensor, op_ids: list, factors: list) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        functions = {"Sharpness": F.adjust_sharpness, "Contrast": F.adjust_contrast}
        out = torch.empty_like(images)
        for i in range(images.shape[0]):
            image = images[i]
            for code, factor in zip(op_ids[i], factors[i]):
                op = self.ops[code]
                if op in functions:
                    image = functions[op](image, factor)
            out[i] = image
        return out


def choose_kernels(kernels: str, device: torch.device) -> str:
    """Resolve `"auto"`: per image on CPU, batched on any other device."""
    if kernels != "auto":
        return kernels
    return "per_image" if torch.device(device).type == "cpu" else "batched"


def _check_video(video: torch.Tensor) -> None:
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of frames, got {type(video).__name__}")
    if video.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {video.dtype}")
    if video.ndim not in (4, 5) or video.shape[-3] != 3:
        raise ValueError(f"expected frames of shape (B, [F,] 3, H, W), got {tuple(video.shape)}")
