"""Video perturbation: torchvision's RandAugment on whole batches of uint8 frames.

The operations, the magnitude scale of each, the random sign and the way a magnitude becomes an
operation's argument are exactly those of `torchvision.transforms.v2.RandAugment`
(`_AUGMENTATION_SPACE` and `_apply_image_or_video_transform`). An operation is drawn uniformly
from the list and its magnitude is bin `M` of that operation's scale (`OP_SPACE`): up to 0.3 for
the shears (sheared by `atan(magnitude)`), `150/331` of the image's width or height for the
translations (by `int(magnitude)` pixels), 30 degrees for Rotate, 0.9 for the four enhancements
(Brightness, Color = saturation, Contrast, Sharpness, each with factor `1 + magnitude`), integer
bits from 8 down to 4 for Posterize, and a threshold from 1 down to 0 (times 255) for Solarize;
Identity, AutoContrast and Equalize take none. The geometric and enhancement magnitudes are
negated with probability 0.5. Geometric operations use nearest interpolation and torchvision's
`fill=None` (0 outside the image). `N` operations are applied in turn, with uint8 rounding after
each, as torchvision does.

The recipe draws from Identity, Sharpness and Contrast (`VIDEO_OPS`); the whole space
(`RANDAUGMENT_OPS`) is there for the paper's Table 2, which tries each operation alone
(`configs/ablations/`). Table 2 has two operations of the RandAugment paper (Cubuk et al.,
2020) that torchvision's RandAugment leaves out: Invert (`255 - x`, no magnitude) and Cutout (a
grey (128) square of half-side `magnitude` pixels at a uniformly drawn centre, clipped at the
border; the paper's scale goes up to 40 px on 224 px images, so here up to `40 * min(H, W) /
224`). A batch's operations, signs and Cutout centres come from one uniform draw of the
module's generator (one kernel launch on a GPU).

Every image is drawn independently: the two frames of a sample get their own operations and
signs. They are one second apart and the model sees each through the same backbone, so
independent draws give more variety without breaking a correspondence the model relies on.

Two implementations share the drawn parameters:

- `batched`: all images that draw the same operation at the same step are processed together.
  Sharpness and Contrast have their own kernels; Sharpness uses an exact integer 3x3 box sum
  instead of a float convolution (the blurred image is rounded to integers in both, and
  `(box + 4 * centre) / 13` is never half-way between two integers, so the rounded values are
  identical). Every other operation calls torchvision's function once per distinct magnitude
  (at most two at a step: +M and -M) on the stacked images that share it.
- `per_image`: a loop of the torchvision functions themselves.

`auto` picks `batched` on CUDA and `per_image` on CPU: there one image's intermediates stay in
the cache while a batch's do not, and the loop was measured as fast or faster
(`bench/bench_video_augment.py`, for the recipe's operations).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from avsc_pipeline.sections.loading import RANDAUGMENT_OPS, VIDEO_KERNELS, VIDEO_OPS
from avsc_pipeline.dataio.rng import SeededModule

MagnitudeScale = Callable[[int, int, int], torch.Tensor]
OpFunction = Callable[[torch.Tensor, float], torch.Tensor]


def _up_to(top: float) -> MagnitudeScale:
    return lambda num_bins, height, width: torch.linspace(0.0, top, num_bins)


# Per operation, its magnitude scale `(num_bins, height, width) -> (num_bins,)` (None: no
# magnitude) and whether the magnitude takes a random sign; torchvision.transforms.v2.RandAugment's
# `_AUGMENTATION_SPACE`, formula for formula and in its order.
OP_SPACE: Dict[str, Tuple[Optional[MagnitudeScale], bool]] = {
    "Identity": (None, False),
    "ShearX": (_up_to(0.3), True),
    "ShearY": (_up_to(0.3), True),
    "TranslateX": (lambda num_bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * width, num_bins), True),
    "TranslateY": (lambda num_bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * height, num_bins), True),
    "Rotate": (_up_to(30.0), True),
    "Brightness": (_up_to(0.9), True),
    "Color": (_up_to(0.9), True),
    "Contrast": (_up_to(0.9), True),
    "Sharpness": (_up_to(0.9), True),
    "Posterize": (
        lambda num_bins, height, width: (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4))).round().int(),
        False,
    ),
    "Solarize": (lambda num_bins, height, width: torch.linspace(1.0, 0.0, num_bins), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
    "Invert": (None, False),
    "Cutout": (lambda num_bins, height, width: torch.linspace(0.0, 40.0 * min(height, width) / 224.0, num_bins),
               False),
}
# Operations whose scale depends on the image's size.
SIZE_DEPENDENT = ("TranslateX", "TranslateY", "Cutout")


def cutout_batch(images: torch.Tensor, half: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Cutout: a grey square per image.

    Args:
        images: `(n, C, H, W)` uint8.
        half: `(n,)` half-sides in pixels (truncated to integers).
        centres: `(n, 2)` float in [0, 1): the square's centre as a fraction of height and width.

    Returns:
        `(n, C, H, W)` uint8 with rows `[cy - half, cy + half)` and columns `[cx - half, cx + half)`
        (clipped to the image) set to 128.
    """
    height, width = images.shape[-2:]
    half = half.to(torch.int64).view(-1, 1)
    cy = (centres[:, 0] * height).to(torch.int64).view(-1, 1)
    cx = (centres[:, 1] * width).to(torch.int64).view(-1, 1)
    rows = torch.arange(height, device=images.device).view(1, -1)
    cols = torch.arange(width, device=images.device).view(1, -1)
    inside_rows = (rows >= cy - half) & (rows < cy + half)
    inside_cols = (cols >= cx - half) & (cols < cx + half)
    square = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]
    return torch.where(square, torch.full_like(images, 128), images)


def magnitude_of(op: str, magnitude: int, num_bins: int, size: Optional[Tuple[int, int]] = None) -> float:
    """The unsigned magnitude torchvision's RandAugment passes to `op` at bin `magnitude`.

    Args:
        op: an operation of `OP_SPACE`.
        magnitude: the bin, `0 <= magnitude < num_bins`.
        num_bins: torchvision's `num_magnitude_bins`.
        size: `(height, width)` of the images; needed by TranslateX and TranslateY only.

    Returns:
        The magnitude (Posterize's bits as a float, as torchvision; 0.0 for an operation
        without magnitude).
    """
    if op not in OP_SPACE:
        raise ValueError(f"expected an operation in {sorted(OP_SPACE)}, got {op!r}")
    scale, _ = OP_SPACE[op]
    if scale is None:
        return 0.0
    if size is None:
        if op in SIZE_DEPENDENT:
            raise ValueError(f"expected the image size (height, width) for {op}, got None")
        size = (0, 0)
    height, width = size
    return float(scale(num_bins, int(height), int(width))[magnitude])


@lru_cache(maxsize=None)
def torchvision_ops() -> Dict[str, OpFunction]:
    """torchvision's function for each operation, taking a `(..., 3, H, W)` uint8 tensor and the
    signed magnitude and called as `RandAugment._apply_image_or_video_transform` calls it."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    nearest = InterpolationMode.NEAREST

    def shear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
        # about the top-left corner, by atan(magnitude) degrees, as torchvision
        return F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=[x, y],
                        interpolation=nearest, fill=None, center=[0, 0])

    def translate(image: torch.Tensor, x: int, y: int) -> torch.Tensor:
        return F.affine(image, angle=0.0, translate=[x, y], scale=1.0, shear=[0.0, 0.0],
                        interpolation=nearest, fill=None)

    return {
        "Identity": lambda image, m: image,
        "ShearX": lambda image, m: shear(image, math.degrees(math.atan(m)), 0.0),
        "ShearY": lambda image, m: shear(image, 0.0, math.degrees(math.atan(m))),
        "TranslateX": lambda image, m: translate(image, int(m), 0),
        "TranslateY": lambda image, m: translate(image, 0, int(m)),
        "Rotate": lambda image, m: F.rotate(image, angle=m, interpolation=nearest, fill=None),
        "Brightness": lambda image, m: F.adjust_brightness(image, 1.0 + m),
        "Color": lambda image, m: F.adjust_saturation(image, 1.0 + m),
        "Contrast": lambda image, m: F.adjust_contrast(image, 1.0 + m),
        "Sharpness": lambda image, m: F.adjust_sharpness(image, 1.0 + m),
        "Posterize": lambda image, m: F.posterize(image, int(m)),
        # torchvision's bound is the dtype's largest value: 255, as frames are checked to be uint8
        "Solarize": lambda image, m: F.solarize(image, 255.0 * m),
        "AutoContrast": lambda image, m: F.autocontrast(image),
        "Equalize": lambda image, m: F.equalize(image),
        "Invert": lambda image, m: F.invert(image),
    }


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
    """RandAugment over a subset of torchvision's operations for whole uint8 frame batches.

    Identity in `eval()` mode. Each image (each frame of each sample) draws its own `num_ops`
    operations and signs from the module's generator on the batch's device.

    Args:
        ops: operations drawn from, a subset of `RANDAUGMENT_OPS` (default: the recipe's
            Identity, Sharpness and Contrast).
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
            raise ValueError(f"expected a non-empty subset of {RANDAUGMENT_OPS}, got {list(ops)}")
        if not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"expected num_ops to be an int >= 0, got {num_ops!r}")
        if not isinstance(magnitude, int) or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"expected 0 <= magnitude < {num_magnitude_bins}, got {magnitude!r}")
        if kernels not in VIDEO_KERNELS:
            raise ValueError(f"expected kernels in {VIDEO_KERNELS}, got {kernels!r}")
        self.ops, self.num_ops, self.magnitude = ops, num_ops, magnitude
        self.num_magnitude_bins, self.kernels = num_magnitude_bins, kernels
        self._signed = [OP_SPACE[op][1] for op in ops]
        self._sized = any(op in SIZE_DEPENDENT for op in ops)
        self._tables: Dict[Optional[Tuple[int, int]], Tuple[float, ...]] = {}
        # Per (device, size): the magnitude table and the signed-op mask, built once, so that a
        # batch on a GPU draws without a host-to-device copy (each one drains the GPU's queue).
        self._constants: Dict[Tuple[str, Optional[Tuple[int, int]]], Tuple[torch.Tensor, torch.Tensor]] = {}
        #: Select Sharpness and Contrast by mask over the whole batch (no `nonzero`, no host
        #: synchronization); None: on CUDA only (on the CPU indexing the chosen images is faster).
        self.masked: Optional[bool] = None

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
        op_ids, magnitudes, centres = self._draw_all(images.shape[0], video.device, tuple(images.shape[-2:]))
        return self.apply(images, op_ids, magnitudes, centres=centres).view(video.shape)

    def unsigned_magnitudes(self, size: Optional[Tuple[int, int]] = None) -> Tuple[float, ...]:
        """`magnitude_of` each of `self.ops` for images of `size` `(height, width)`."""
        key = (int(size[0]), int(size[1])) if self._sized and size is not None else None
        if key not in self._tables:
            self._tables[key] = tuple(magnitude_of(op, self.magnitude, self.num_magnitude_bins, key)
                                      for op in self.ops)
        return self._tables[key]

    def draw(self, n: int, device: torch.device,
             size: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Operations and signed magnitudes for `n` images.

        Args:
            n: number of images.
            device: the device to draw on (with the module's generator for it).
            size: `(height, width)` of the images; needed when TranslateX or TranslateY is
                among the operations.

        Returns:
            `(n, num_ops)` int64 indices into `self.ops` and `(n, num_ops)` float64 magnitudes,
            the values torchvision's RandAugment passes to the operations: `magnitude_of` the
            drawn operation, negated with probability 0.5 for signed operations (0 for
            operations without magnitude).
        """
        op_ids, magnitudes, _ = self._draw_all(n, device, size)
        return op_ids, magnitudes

    def _draw_all(self, n: int, device: torch.device,
                  size: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`draw`'s operations and magnitudes and the Cutout centres `(n, num_ops, 2)`
        (None without Cutout), from one `(n, num_ops, 4)` float64 uniform draw: the operation
        `floor(u * len(ops))`, the sign (negative when `u < 0.5`) and the two centre fractions."""
        table, signed_ops = self._device_constants(torch.device(device), size)
        u = torch.rand((n, self.num_ops, 4), generator=self.generator_for(device), device=device, dtype=torch.float64)
        op_ids = u[..., 0].mul(len(self.ops)).floor_().clamp_max_(len(self.ops) - 1).to(torch.int64)
        negate = u[..., 1] < 0.5
        magnitudes = table[op_ids]
        signed = signed_ops[op_ids]
        centres = u[..., 2:] if "Cutout" in self.ops else None
        return op_ids, torch.where(negate & signed, -magnitudes, magnitudes), centres

    def _device_constants(self, device: torch.device,
                          size: Optional[Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), (int(size[0]), int(size[1])) if self._sized and size is not None else None)
        if key not in self._constants:
            table = torch.tensor(self.unsigned_magnitudes(size), dtype=torch.float64, device=device)
            signed = torch.tensor(self._signed, dtype=torch.bool, device=device)
            self._constants[key] = (table, signed)
        return self._constants[key]

    def apply(self, images: torch.Tensor, op_ids: torch.Tensor, magnitudes: torch.Tensor,
              kernels: Optional[str] = None, centres: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Apply drawn operations (deterministic).

        Args:
            images: `(n, 3, H, W)` uint8.
            op_ids: `(n, num_ops)` int64 indices into `self.ops`.
            magnitudes: `(n, num_ops)` float64 signed magnitudes, as from :meth:`draw`
                (Sharpness and Contrast use the factor `1 + magnitude`).
            kernels: overrides the module's kernels.
            centres: `(n, num_ops, 2)` Cutout centres in [0, 1) (needed when Cutout is drawn).

        Returns:
            `(n, 3, H, W)` uint8.
        """
        _check_video(images)
        if op_ids.shape != (images.shape[0], self.num_ops) or magnitudes.shape != op_ids.shape:
            raise ValueError(
                f"expected op_ids and magnitudes of shape {(images.shape[0], self.num_ops)}, "
                f"got {tuple(op_ids.shape)} and {tuple(magnitudes.shape)}"
            )
        if "Cutout" in self.ops and centres is None:
            raise ValueError("expected Cutout centres (n, num_ops, 2) with Cutout among the operations, got None")
        kernels = choose_kernels(kernels or self.kernels, images.device)
        if kernels == "per_image":
            return self._apply_per_image(images, op_ids.cpu().tolist(), magnitudes.cpu().tolist(), centres)
        return self._apply_batched(images, op_ids, magnitudes, centres)

    def _apply_batched(self, images: torch.Tensor, op_ids: torch.Tensor, magnitudes: torch.Tensor,
                       centres: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = images.clone()
        masked = self.masked if self.masked is not None else images.device.type == "cuda"
        for step in range(self.num_ops):
            for code, op in enumerate(self.ops):
                if op == "Identity":
                    continue
                if masked and op in _BATCH_KERNELS:
                    # Every image through the kernel, the chosen ones kept: no host synchronization.
                    chosen = (op_ids[:, step] == code).view(-1, 1, 1, 1)
                    out = torch.where(chosen, _BATCH_KERNELS[op](out, 1.0 + magnitudes[:, step]), out)
                    continue
                idx = (op_ids[:, step] == code).nonzero().squeeze(1)
                if not idx.numel():
                    continue
                if op == "Cutout":
                    out[idx] = cutout_batch(out[idx], magnitudes[idx, step], centres[idx, step])
                elif op in _BATCH_KERNELS:
                    out[idx] = _BATCH_KERNELS[op](out[idx], 1.0 + magnitudes[idx, step])
                else:
                    out[idx] = _apply_grouped(torchvision_ops()[op], out[idx], magnitudes[idx, step])
        return out

    def _apply_per_image(self, images: torch.Tensor, op_ids: list, magnitudes: list,
                         centres: Optional[torch.Tensor] = None) -> torch.Tensor:
        functions = torchvision_ops()
        out = torch.empty_like(images)
        for i in range(images.shape[0]):
            image = images[i]
            for step, (code, magnitude) in enumerate(zip(op_ids[i], magnitudes[i])):
                if self.ops[code] == "Cutout":
                    image = cutout_batch(image[None], torch.tensor([magnitude]), centres[i, step][None])[0]
                else:
                    image = functions[self.ops[code]](image, magnitude)
            out[i] = image
        return out


def _apply_grouped(function: OpFunction, images: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """`function(image, magnitude)` for `(n, 3, H, W)` images, one call per distinct magnitude."""
    out = torch.empty_like(images)
    for value in magnitudes.unique().tolist():
        same = (magnitudes == value).nonzero().squeeze(1)
        out[same] = function(images[same], value)
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
