"""Typed settings of stage two's input: batch augmentation (`batch_augment:`) and loading (`loader:`).

Both round-trip through YAML sections with :func:`avsc_pipeline.sections.load_section`::

    augment = load_section("configs/paper.yaml", "batch_augment")
    loader = load_section("configs/paper.yaml", "loader")

The defaults are the paper's settings (USTC, DCASE 2021 Task 1b) where the paper gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from avsc_pipeline.config import check_choice, check_int, check_unit

MASK_FILLS = ("mean", "zero")
VIDEO_KERNELS = ("auto", "batched", "per_image")
AUDIO_NORMALIZATIONS = ("none", "standardize")
# torchvision's RandAugment operations, in the order of its `_AUGMENTATION_SPACE`.
RANDAUGMENT_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
    # The RandAugment paper's two operations that torchvision's RandAugment leaves out (Table 2).
    "Invert", "Cutout",
)
# The recipe's video perturbation.
VIDEO_OPS = ("Identity", "Sharpness", "Contrast")


@dataclass(frozen=True)
class BatchAugmentConfig:
    """On-device batch augmentation, applied in training only.

    Attributes:
        spec_augment: apply SpecAugment (no time warping) to the audio features.
        time_masks: time masks per sample.
        freq_masks: frequency masks per sample.
        mask_per_channel: each of the six feature channels draws its own masks (Hu et al.'s
            audio step) instead of one set covering all channels.
        max_mask_fraction: each mask's width is drawn uniformly from 0 to
            `floor(max_mask_fraction * axis length)` (3 of 39 frames, 12 of 128 bands).
        mask_fill: `"mean"` fills a mask with the sample's per-channel mean, `"zero"` with 0
            (after normalization, the training-set mean).
        channel_swap_p: per-sample probability of exchanging the left `[0:3]` and right `[3:6]`
            feature blocks; 0 turns it off.
        video_ops: the RandAugment operations drawn from, a subset of `RANDAUGMENT_OPS`
            (torchvision's); the recipe's are `VIDEO_OPS`, Identity, Sharpness and Contrast.
            Empty turns video perturbation off.
        video_num_ops: RandAugment N, operations applied in turn to each frame.
        video_magnitude: RandAugment M, a bin of torchvision's magnitude scale.
        video_magnitude_bins: torchvision's `num_magnitude_bins`.
        video_kernels: `"batched"`, `"per_image"` (a loop of torchvision calls) or `"auto"`
            (batched on CUDA, and on CPU where it was measured faster; see `augment_video`).
        mixup_fraction: fraction of each batch mixed with a partner; 0 turns mixup off.
        mixup_ratio: the partner's weight in a mix (the paper's fixed 0.4).
        mixup_alpha: when set, the partner's weight is drawn per sample from Beta(a, a) instead.
    """

    spec_augment: bool = True
    time_masks: int = 1
    freq_masks: int = 1
    mask_per_channel: bool = False
    max_mask_fraction: float = 0.1
    mask_fill: str = "mean"
    channel_swap_p: float = 0.5
    video_ops: Tuple[str, ...] = VIDEO_OPS
    video_num_ops: int = 2
    video_magnitude: int = 14
    video_magnitude_bins: int = 31
    video_kernels: str = "auto"
    mixup_fraction: float = 0.2
    mixup_ratio: float = 0.4
    mixup_alpha: Optional[float] = None

    def __post_init__(self) -> None:
        check_int(self, ("time_masks", "freq_masks", "video_num_ops"))
        check_unit(self, ("max_mask_fraction", "channel_swap_p", "mixup_fraction", "mixup_ratio"))
        check_choice(self, "mask_fill", MASK_FILLS)
        unknown = [op for op in self.video_ops if op not in RANDAUGMENT_OPS]
        if unknown:
            raise ValueError(f"expected video_ops within {RANDAUGMENT_OPS}, got {list(self.video_ops)}")
        check_choice(self, "video_kernels", VIDEO_KERNELS)
        if not isinstance(self.video_magnitude_bins, int) or self.video_magnitude_bins < 2:
            raise ValueError(f"expected video_magnitude_bins >= 2, got {self.video_magnitude_bins!r}")
        if not isinstance(self.video_magnitude, int) or not 0 <= self.video_magnitude < self.video_magnitude_bins:
            raise ValueError(
                f"expected 0 <= video_magnitude < {self.video_magnitude_bins}, got {self.video_magnitude!r}"
            )
        if self.mixup_alpha is not None and not self.mixup_alpha > 0:
            raise ValueError(f"expected mixup_alpha > 0 or None, got {self.mixup_alpha!r}")


@dataclass(frozen=True)
class LoaderConfig:
    """How training batches are sampled and loaded.

    Attributes:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 reads in the training process; -1: as many
            as the machine's cores allow, up to 8 per training process, see
            `loader.worker_count`).
        pin_memory: page-lock host batches; used only when the device is CUDA.
        persistent_workers: keep workers (and their open shard files) between epochs.
        prefetch_factor: batches loaded ahead by each worker.
        drop_last: drop the last incomplete training batch.
        aug_fraction: fraction of the augmented rows (`train-aug`) drawn, without replacement,
            into each training epoch, a new subset every epoch; 0 uses originals only.
        val_fraction: fraction of each class's recording locations held out for validation.
        split_seed: seed of the location-disjoint split (fixed, independent of the run seed).
        audio_stats: file name, beside the training shards, of the audio mean and std.
        audio_normalize: `none` feeds the audio features as stored (the authors' definition
            scales them to [0, 1] in stage one); `standardize` subtracts the per-channel training
            mean and divides by the std from `audio_stats` (for unscaled features, e.g. dB).
    """

    batch_size: int = 32
    num_workers: int = -1
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    drop_last: bool = True
    aug_fraction: float = 1.0
    val_fraction: float = 0.1
    split_seed: int = 0
    audio_stats: str = "audio_stats.json"
    audio_normalize: str = "none"

    def __post_init__(self) -> None:
        check_int(self, ("num_workers",), minimum=-1)
        check_int(self, ("batch_size", "prefetch_factor"), minimum=1)
        check_unit(self, ("aug_fraction",))
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"expected 0 <= val_fraction < 1, got {self.val_fraction!r}")
        if not self.audio_stats or "/" in self.audio_stats:
            raise ValueError(f"expected a plain file name for audio_stats, got {self.audio_stats!r}")
        check_choice(self, "audio_normalize", AUDIO_NORMALIZATIONS)

