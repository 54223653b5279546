"""Batch preparation on the training device: normalization and batch augmentation.

:class:`BatchPreparer`, on the device:

1. perturbs the uint8 frames (RandAugment, defined on uint8 images),
2. converts and normalizes them (the video backbone's mean and std) and the audio (per-channel
   training mean/std, or as stored when no statistics are given: `loader.audio_normalize: none`);
   waveform shards (`features.audio: waveform`) go through PANNs' log-mel front end instead
   (:mod:`avsc_pipeline.dataio.front_end`),
3. masks and channel-swaps the audio (the log-mel of the front end alike),
4. mixes audio, frames and one-hot targets jointly.

Steps 1, 3 and 4 run in `train()` mode only. Evaluation and prediction use the same module in
`eval()` mode; nothing here knows about loader workers.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from avsc_pipeline.dataio.batch_augment import ChannelSwap, JointMixup, SpecAugment, one_hot
from avsc_pipeline.dataio.front_end import front_end_for
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.sections.loading import BatchAugmentConfig
from avsc_pipeline.dataio.stats import AudioStats
from avsc_pipeline.dataio.video_augment import VideoRandAugment
from avsc_pipeline.errors import describe

class FrameNormalize(nn.Module):
    """uint8 frames -> float32 `(x / 255 - mean) / std` per RGB channel.

    Args:
        mean: 3 channel means on the [0, 1] scale.
        std: 3 channel standard deviations on the [0, 1] scale.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t, std_t = _channel_vector(mean, 3, "mean"), _channel_vector(std, 3, "std")
        if not bool((std_t > 0).all()):
            raise ValueError(f"expected positive std values, got {std_t.tolist()}")
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(3, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(3, 1, 1))

    def extra_repr(self) -> str:
        # On the host: the buffers may live on a GPU.
        std_t = 1.0 / (255.0 * self.scale.detach().cpu().flatten())
        std, mean = std_t.tolist(), (-self.shift.detach().cpu().flatten() * std_t).tolist()
        return f"mean={[round(v, 4) for v in mean]}, std={[round(v, 4) for v in std]}"

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Normalize frames.

        Args:
            video: `(..., 3, H, W)` uint8, e.g. `(B, 2, 3, 224, 224)`.

        Returns:
            float32 of the same shape.
        """
        if not isinstance(video, torch.Tensor) or video.dtype != torch.uint8:
            raise TypeError(f"expected uint8 frames, got {describe(video)}")
        if video.ndim < 3 or video.shape[-3] != 3:
            raise ValueError(f"expected frames of shape (..., 3, H, W), got {tuple(video.shape)}")
        # One float32 allocation, scaled in place: on CPU a second 4-byte copy of the frames
        # costs as much as the arithmetic.
        return video.to(torch.float32).mul_(self.scale).add_(self.shift)


class AudioNormalize(nn.Module):
    """Features -> `(x - mean) / std` per feature channel.

    Args:
        mean: one mean per channel.
        std: one standard deviation per channel (floored at `eps`).
        eps: smallest std used.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], eps: float = 1e-6) -> None:
        super().__init__()
        mean_t = _channel_vector(mean, len(mean), "mean")
        std_t = _channel_vector(std, len(mean), "std").clamp_min(eps)
        self.register_buffer("mean", mean_t.view(-1, 1, 1))
        self.register_buffer("inv_std", (1.0 / std_t).view(-1, 1, 1))

    def extra_repr(self) -> str:
        return f"channels={self.mean.numel()}"

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalize features.

        Args:
            audio: `(B, C, F, T)` floating point, e.g. `(B, 6, 128, 39)` float16 or float32.

        Returns:
            float32 of the same shape.
        """
        if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
            raise TypeError(f"expected floating point audio features, got {describe(audio)}")
        if audio.ndim != 4 or audio.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected audio of shape (B, {self.mean.shape[0]}, F, T), got {tuple(audio.shape)}")
        return (audio.to(torch.float32) - self.mean) * self.inv_std


class BatchPreparer(nn.Module):
    """A loader batch -> augmented, normalized tensors on this module's device.

    Move it with `.to(device)`; batches are moved there (non-blocking from pinned memory).

    Args:
        num_classes: size of the one-hot targets.
        audio_stats: the training audio statistics to standardize the audio with, or None to
            feed it as stored (only cast to float32), as the authors feed their [0, 1]-scaled
            features (`loader.audio_normalize: none`).
        frame_norm: the frames' `(mean, std)` per RGB channel, read from the model that will
            consume them (`(model.frame_mean, model.frame_std)`, as timm's
            `resolve_data_config` reads a model's own): build the model first.
        augment: augmentation settings; None for none (evaluation only).
        seed: the run seed; each augmentation gets its own stream derived from it.
        features: the stage-one config of the batches' shards: with `audio: waveform` the
            stored waveforms go through PANNs' log-mel front end on the device (no statistics:
            the front end's dB go in as they come); None or log-mel features: as stored.
    """

    def __init__(self, num_classes: int, audio_stats: Optional[AudioStats],
                 frame_norm: Tuple[Sequence[float], Sequence[float]],
                 augment: Optional[BatchAugmentConfig] = None, seed: int = 0,
                 features: Optional[FeatureConfig] = None) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"expected num_classes >= 1, got {num_classes!r}")
        if not isinstance(frame_norm, (tuple, list)) or len(frame_norm) != 2:
            raise TypeError(f"expected frame_norm as the model's (mean, std) pair, got {frame_norm!r}")
        if features is not None and not isinstance(features, FeatureConfig):
            raise TypeError(f"expected features to be a FeatureConfig or None, got {type(features).__name__}")
        self.front_end = front_end_for(features)
        if self.front_end is not None and audio_stats is not None:
            raise ValueError("expected no audio statistics for waveform features (loader.audio_normalize: none; "
                             "the statistics are of stored log-mel features), got some")
        self.num_classes = num_classes
        self.audio_norm = None if audio_stats is None else AudioNormalize(audio_stats.mean, audio_stats.std)
        self.frame_norm = FrameNormalize(*frame_norm)
        self.video_aug, self.spec_aug, self.channel_swap, self.mixup = _augmentations(augment, seed)

    def forward(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        """Prepare one batch.

        Args:
            batch: from the loader: `audio (B, 6, F, T)` float (or `(B, 2, N)` waveforms for
                the front end), optional `video (B, 2, 3, H, W)` uint8, `label (B,)` int64, and
                any other keys (passed through).

        Returns:
            The batch with `audio (B, 6, F, T)` float32 (the front end's `(B, 2, 64, 1 + N // 320)`
            for waveforms), `video (B, 2, 3, H, W)` float32 (when
            present), `label (B,)` int64 and `target (B, num_classes)` float32 (one-hot, mixed
            in training; a row of zeros for an unknown label), all on this module's device.
        """
        for key in ("audio", "label"):
            if key not in batch:
                raise ValueError(f"expected a batch with {key!r}, got keys {sorted(batch)}")
        device = self.frame_norm.scale.device
        out = dict(batch)
        audio = batch["audio"].to(device, non_blocking=True)
        if self.front_end is not None:
            audio = self.front_end(audio)  # a new float32 tensor: the augmentations may write into it
        else:
            audio = _float_audio(audio) if self.audio_norm is None else self.audio_norm(audio)
        video = batch.get("video")
        if video is not None:
            video = video.to(device, non_blocking=True)
            video = self.frame_norm(self.video_aug(video) if self.video_aug is not None else video)
        for module in (self.spec_aug, self.channel_swap):
            if module is not None:
                audio = module(audio)
        label = batch["label"].to(device, non_blocking=True)
        target = one_hot(label, self.num_classes)
        if self.mixup is not None:
            audio, video, target = self.mixup(audio, video, target)
        out.update(audio=audio, label=label, target=target)
        if video is not None:
            out["video"] = video
        return out


def _augmentations(augment: Optional[BatchAugmentConfig], seed: int) -> Tuple[Optional[nn.Module], ...]:
    if augment is None:
        return None, None, None, None
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(4, dtype=np.uint64) >> np.uint64(1)]
    video = spec = swap = mix = None
    if augment.video_ops and augment.video_num_ops:
        video = VideoRandAugment(augment.video_ops, augment.video_num_ops, augment.video_magnitude,
                                 augment.video_magnitude_bins, augment.video_kernels, seed=seeds[0])
    if augment.spec_augment:
        spec = SpecAugment(augment.time_masks, augment.freq_masks, augment.max_mask_fraction,
                           augment.mask_fill, seed=seeds[1], per_channel=augment.mask_per_channel)
    if augment.channel_swap_p > 0:
        swap = ChannelSwap(augment.channel_swap_p, seed=seeds[2])
    if augment.mixup_fraction > 0:
        mix = JointMixup(augment.mixup_fraction, augment.mixup_ratio, augment.mixup_alpha, inplace=True,
                         seed=seeds[3])
    return video, spec, swap, mix


def _float_audio(audio: torch.Tensor) -> torch.Tensor:
    """`(B, C, F, T)` floating point features as a new float32 tensor, unnormalized (a copy, as
    :class:`AudioNormalize` makes one: the in-place augmentations must not write into the
    loader's batch)."""
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        raise TypeError(f"expected floating point audio features, got {describe(audio)}")
    if audio.ndim != 4:
        raise ValueError(f"expected audio of shape (B, C, F, T), got {tuple(audio.shape)}")
    return audio.to(torch.float32, copy=True)


def _channel_vector(values: Sequence[float], size: int, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float32).flatten()
    if tensor.numel() != size:
        raise ValueError(f"expected {size} {name} values, got {tensor.numel()}")
    if name == "std" and not bool((tensor >= 0).all()):
        raise ValueError(f"expected non-negative std values, got {tensor.tolist()}")
    return tensor
