"""DataLoader set-up and the batch preparation that happens on the training device.

Workers read whole batches (:meth:`ShardDataset.read_batch`) into shared-memory slots that the
training process owns and hands out without a copy (:mod:`~avsc_pipeline.training.batch_pool`);
frames stay uint8, and audio in its stored dtype, until they reach the device: a quarter of
the float32 traffic for the frames. :class:`BatchPreparer` then, on the device:

1. perturbs the uint8 frames (RandAugment, defined on uint8 images),
2. converts and normalizes them (`FRAME_NORMS`) and the audio (per-channel training mean/std),
3. masks and channel-swaps the audio,
4. mixes audio, frames and one-hot targets jointly.

Steps 1, 3 and 4 run in `train()` mode only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from avsc_pipeline.training.augment import ChannelSwap, JointMixup, SpecAugment, one_hot
from avsc_pipeline.training.augment_video import VideoRandAugment
from avsc_pipeline.training.batch_pool import NO_SLOT, PendingSlots, SlotPool
from avsc_pipeline.training.config import AugmentConfig, LoaderConfig
from avsc_pipeline.training.dataset import ShardDataset
from avsc_pipeline.training.samplers import EpochSampler, Split, split_items
from avsc_pipeline.training.stats import AudioStats, ensure_audio_stats

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Frame mean and std per name. The Places365 CNNs (CSAILVision/places365) were trained with the
# ImageNet values, so both names give the same numbers; the name records which backbone it is.
FRAME_NORMS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "imagenet": _IMAGENET,
    "places365": _IMAGENET,
}


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
        std = (1.0 / (255.0 * self.scale.flatten())).tolist()
        mean = (-self.shift.flatten() * torch.tensor(std)).tolist()
        return f"mean={[round(v, 4) for v in mean]}, std={[round(v, 4) for v in std]}"

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Normalize frames.

        Args:
            video: `(..., 3, H, W)` uint8, e.g. `(B, 2, 3, 224, 224)`.

        Returns:
            float32 of the same shape.
        """
        if not isinstance(video, torch.Tensor) or video.dtype != torch.uint8:
            raise TypeError(f"expected uint8 frames, got {_describe(video)}")
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
            raise TypeError(f"expected floating point audio features, got {_describe(audio)}")
        if audio.ndim != 4 or audio.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected audio of shape (B, {self.mean.shape[0]}, F, T), got {tuple(audio.shape)}")
        return (audio.to(torch.float32) - self.mean) * self.inv_std


class BatchPreparer(nn.Module):
    """A loader batch -> augmented, normalized tensors on this module's device.

    Move it with `.to(device)`; batches are moved there (non-blocking from pinned memory).

    Args:
        num_classes: size of the one-hot targets.
        audio_stats: the training audio statistics.
        frame_norm: a name in `FRAME_NORMS`.
        augment: augmentation settings; None for none (evaluation only).
        seed: the run seed; each augmentation gets its own stream derived from it.
    """

    def __init__(self, num_classes: int, audio_stats: AudioStats, frame_norm: str = "imagenet",
                 augment: Optional[AugmentConfig] = None, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"expected num_classes >= 1, got {num_classes!r}")
        if frame_norm not in FRAME_NORMS:
            raise ValueError(f"expected frame_norm in {sorted(FRAME_NORMS)}, got {frame_norm!r}")
        self.num_classes = num_classes
        self.audio_norm = AudioNormalize(audio_stats.mean, audio_stats.std)
        self.frame_norm = FrameNormalize(*FRAME_NORMS[frame_norm])
        self.video_aug, self.spec_aug, self.channel_swap, self.mixup = _augmentations(augment, seed)

    def forward(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        """Prepare one batch.

        Args:
            batch: from the loader: `audio (B, 6, F, T)` float, optional `video (B, 2, 3, H, W)`
                uint8, `label (B,)` int64, and any other keys (passed through).

        Returns:
            The batch with `audio (B, 6, F, T)` float32, `video (B, 2, 3, H, W)` float32 (when
            present), `label (B,)` int64 and `target (B, num_classes)` float32 (one-hot, mixed
            in training; a row of zeros for an unknown label), all on this module's device.
        """
        for key in ("audio", "label"):
            if key not in batch:
                raise ValueError(f"expected a batch with {key!r}, got keys {sorted(batch)}")
        device = self.frame_norm.scale.device
        out = dict(batch)
        audio = self.audio_norm(batch["audio"].to(device, non_blocking=True))
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


def _augmentations(augment: Optional[AugmentConfig], seed: int) -> Tuple[Optional[nn.Module], ...]:
    if augment is None:
        return None, None, None, None
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(4, dtype=np.uint64) >> np.uint64(1)]
    video = spec = swap = mix = None
    if augment.video_ops and augment.video_num_ops:
        video = VideoRandAugment(augment.video_ops, augment.video_num_ops, augment.video_magnitude,
                                 augment.video_magnitude_bins, augment.video_backend, seed=seeds[0])
    if augment.spec_augment:
        spec = SpecAugment(augment.time_masks, augment.freq_masks, augment.max_mask_fraction,
                           augment.mask_fill, seed=seeds[1])
    if augment.channel_swap_p > 0:
        swap = ChannelSwap(augment.channel_swap_p, seed=seeds[2])
    if augment.mixup_fraction > 0:
        mix = JointMixup(augment.mixup_fraction, augment.mixup_ratio, augment.mixup_alpha, inplace=True,
                         seed=seeds[3])
    return video, spec, swap, mix


SMALL_KEYS = ("label", "segment", "index")


class BatchReads(torch.utils.data.Dataset):
    """A dataset of whole batches: item `[i, j, ...]` is `ShardDataset.read_batch([i, j, ...])`.

    Used with a `BatchSampler` as the sampler and `batch_size=None`, so a worker reads a batch
    at once instead of collating single items. Audio stays in its stored dtype (converted on
    the device). With a slot pool (set by :class:`ShardLoader` for each set of workers), a
    worker reads into one of its slots and returns the batch without `audio` and `video` but
    with `"slot"` and `"rows"`, and the small integer fields as numpy arrays;
    :class:`ShardLoader` puts it back together.

    Args:
        dataset: the items.
        slots: slots per worker (0: no pool; every batch travels in new shared memory).
        capacity: rows per slot.
    """

    def __init__(self, dataset: ShardDataset, slots: int = 0, capacity: int = 1) -> None:
        self.dataset, self.slots, self.capacity = dataset, slots, capacity
        self.pool: Optional[SlotPool] = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> Dict[str, Any]:
        info = torch.utils.data.get_worker_info()
        slot, buffers = NO_SLOT, None
        if info is not None and self.pool is not None:
            slot, buffers = self.pool.acquire(info.id, len(indices))
        batch = self.dataset.read_batch(indices, out=buffers or None, audio_float32=False)
        if info is not None:
            for key in SMALL_KEYS:
                # Sent by value: a tensor would cost a new shared-memory segment per batch.
                batch[key] = batch[key].numpy()
        if slot != NO_SLOT:
            for key in buffers:
                del batch[key]
            batch.update(slot=slot, rows=len(indices))
        return batch


def keep_batch(batch: Dict[str, Any]) -> Dict[str, Any]:
    """The collate function of :class:`BatchReads` batches: they are already collated."""
    return batch


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a worker from torch's per-worker seed (a SeedSequence)."""
    seed = torch.initial_seed() % 2**63
    state = np.random.SeedSequence([seed, worker_id]).generate_state(2)
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))


class ShardLoader(torch.utils.data.DataLoader):
    """A DataLoader of :class:`BatchReads` batches, with a slot pool for its workers.

    Each set of workers gets a new :class:`~avsc_pipeline.training.batch_pool.SlotPool`.
    Batches read into a slot come out as tensors over the slot's memory, without a copy, and
    the slot is given back once nothing refers to them; with `pin_slots` (a CUDA device) they
    are copied into pinned memory instead and the slot is given back at once.

    Args:
        *args, **kwargs: as for `DataLoader`.
        pin_slots: copy slot batches into pinned memory.
    """

    def __init__(self, *args: Any, pin_slots: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pin_slots = pin_slots
        self._pending = PendingSlots()

    def __iter__(self) -> Iterator[Dict[str, Any]]:  # type: ignore[override]
        reads = self.dataset
        if isinstance(reads, BatchReads) and reads.slots > 0 and self.num_workers > 0:
            if reads.pool is None or not self.persistent_workers:  # a new set of workers
                reads.pool = SlotPool(self.num_workers, reads.slots, reads.capacity,
                                      reads.dataset.buffer_specs())
        for batch in super().__iter__():
            for key in SMALL_KEYS:
                batch[key] = torch.as_tensor(batch[key])
            slot = batch.pop("slot", NO_SLOT)
            if slot != NO_SLOT:
                batch.update(self._from_slot(reads.pool, slot, batch.pop("rows")))
            self._pending.release_unreferenced()
            yield batch
            del batch  # so that the previous batch can be released on the next round

    def _from_slot(self, pool: SlotPool, slot: int, rows: int) -> Dict[str, torch.Tensor]:
        tensors = pool.view(slot, rows)
        if self.pin_slots:
            tensors = {k: torch.empty_like(v, pin_memory=True).copy_(v) for k, v in tensors.items()}
            pool.release(slot)
        else:
            self._pending.add(pool, slot, list(tensors.values()))
        return tensors

    def release_unreferenced(self) -> int:
        """Give back the slots of handed-out batches that nothing refers to any more (done on
        every batch; call it after the last one to free the rest). Returns how many."""
        return self._pending.release_unreferenced()


def make_loader(dataset: ShardDataset, sampler: torch.utils.data.Sampler, config: LoaderConfig,
                device: "torch.device | str", seed: int = 0,
                drop_last: Optional[bool] = None) -> ShardLoader:
    """A DataLoader of whole batches from `dataset` in `sampler`'s order.

    Args:
        dataset: the items.
        sampler: yields item positions (e.g. an :class:`EpochSampler`; call its `set_epoch`).
        config: batch size, workers, pinning, persistence, prefetching.
        device: the training device; memory is pinned only for CUDA.
        seed: seeds the workers.
        drop_last: overrides `config.drop_last` (e.g. False for validation).

    Returns:
        A loader yielding dicts as :meth:`ShardDataset.read_batch` returns them, with audio in
        its stored dtype; pass them to a :class:`BatchPreparer`.
    """
    device = torch.device(device)
    pin = config.pin_memory and device.type == "cuda"
    batches = torch.utils.data.BatchSampler(sampler, config.batch_size,
                                            config.drop_last if drop_last is None else drop_last)
    kwargs: Dict[str, Any] = {}
    reads = BatchReads(dataset)
    if config.num_workers > 0:
        kwargs.update(persistent_workers=config.persistent_workers, prefetch_factor=config.prefetch_factor)
        # Per worker: the batches in flight, the one in use and the one before it (given back
        # a round late, when the caller's loop variable moves on).
        reads = BatchReads(dataset, slots=config.prefetch_factor + 2, capacity=config.batch_size)
    return ShardLoader(
        reads, batch_size=None, sampler=batches, num_workers=config.num_workers, collate_fn=keep_batch,
        pin_memory=pin, pin_slots=pin, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed), **kwargs,
    )


@dataclass
class TrainingInput:
    """Everything stage two reads: the dataset, its split, samplers, loaders and statistics."""

    dataset: ShardDataset
    split: Split
    train_sampler: EpochSampler
    train: ShardLoader
    validation: ShardLoader
    audio_stats: AudioStats
    preparer: BatchPreparer


def build_training_input(folders: Sequence[Any], config: LoaderConfig, device: "torch.device | str",
                         seed: int = 0, with_video: bool = True,
                         augment: Optional[AugmentConfig] = AugmentConfig()) -> TrainingInput:
    """Everything stage two reads, from the loader and augmentation settings.

    Args:
        folders: shard folders, originals first (e.g. `[OUT/train, OUT/train-aug]`).
        config: the loader settings.
        device: the training device (the preparer is moved there).
        seed: the run seed (epoch order, workers, augmentation streams).
        with_video: read frames.
        augment: augmentation settings of the preparer (None for none).

    Returns:
        The dataset, its location-disjoint split, the training sampler (call `set_epoch`), the
        training and validation loaders, the audio statistics of the first folder (computed and
        stored there on first use, over all its rows) and the batch preparer on `device`.
    """
    dataset = ShardDataset(folders, with_video=with_video)
    split = split_items(dataset.identifiers, dataset.labels, dataset.is_augmented,
                        config.val_fraction, config.split_seed)
    sampler = EpochSampler(split.train, split.augmented, config.aug_fraction, shuffle=True, seed=seed)
    val_sampler = EpochSampler(split.validation, shuffle=False, seed=seed)
    stats = ensure_audio_stats(folders[0], config.audio_stats)
    preparer = BatchPreparer(len(dataset.classes), stats, config.frame_norm, augment, seed).to(device)
    return TrainingInput(
        dataset, split, sampler,
        make_loader(dataset, sampler, config, device, seed),
        make_loader(dataset, val_sampler, config, device, seed, drop_last=False),
        stats, preparer,
    )


def _channel_vector(values: Sequence[float], size: int, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float32).flatten()
    if tensor.numel() != size:
        raise ValueError(f"expected {size} {name} values, got {tensor.numel()}")
    if name == "std" and not bool((tensor >= 0).all()):
        raise ValueError(f"expected non-negative std values, got {tensor.tolist()}")
    return tensor


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
