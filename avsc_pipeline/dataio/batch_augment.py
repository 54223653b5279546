"""Batch augmentation of audio features and joint mixup, on the batch's device.

Each module works on a whole batch, draws per-sample randomness from its own generator (see
:class:`~avsc_pipeline.dataio.rng.SeededModule`), and is the identity in `eval()` mode. The
video perturbation lives in :mod:`avsc_pipeline.dataio.video_augment`.

Each module draws all of a batch's randomness in one call (one uniform tensor for every mask of
every sample and channel, one for the mixup's positions and partners), and the mixup's
Beta(alpha, alpha) ratios are drawn in blocks of many batches: on a GPU a batch costs a few
kernel launches instead of one per mask or per gamma candidate, and nothing here synchronizes
with the host, so the whole preparation can be captured in a CUDA graph
(:mod:`avsc_pipeline.training.graphed_step`). The distributions are those of drawing per sample
(`tests/dataio/test_batch_augment_draws.py` compares them with the per-sample draws).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from avsc_pipeline.sections.loading import MASK_FILLS
from avsc_pipeline.dataio.rng import SeededModule, beta_sample
from avsc_pipeline.errors import describe

AUDIO_CHANNELS = 6
#: Beta ratios drawn at once by :class:`JointMixup` (rounded up to whole batches): 256 batches of
#: the recipe's 32 mixed samples.
BETA_BLOCK = 8192


class SpecAugment(SeededModule):
    """Time and frequency masking (no time warping), drawn per sample.

    Each sample gets `time_masks` time masks and `freq_masks` frequency masks. A mask's width
    is uniform over `0..floor(max_fraction * axis length)` and its start uniform over the
    positions where it fits; the mask covers all channels of that sample, or, with
    `per_channel` (Hu et al.'s FCNN recipe), each channel draws masks of its own. Masked cells are
    filled with the sample's per-channel mean (`fill="mean"`, computed before masking) or with
    0 (`fill="zero"`; on normalized features that is the training-set mean).

    Args:
        time_masks: time masks per sample.
        freq_masks: frequency masks per sample.
        max_fraction: the largest mask width as a fraction of its axis.
        fill: `"mean"` or `"zero"`.
        per_channel: draw the masks of each channel separately.
        seed: seed of the module-owned generators.
        generator: a generator to draw from instead.
    """

    def __init__(self, time_masks: int = 1, freq_masks: int = 1, max_fraction: float = 0.1,
                 fill: str = "mean", seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, per_channel: bool = False) -> None:
        super().__init__(seed, generator)
        for name, value in (("time_masks", time_masks), ("freq_masks", freq_masks)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"expected {name} to be an int >= 0, got {value!r}")
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"expected 0 <= max_fraction <= 1, got {max_fraction!r}")
        if fill not in MASK_FILLS:
            raise ValueError(f"expected fill in {MASK_FILLS}, got {fill!r}")
        self.time_masks, self.freq_masks = time_masks, freq_masks
        self.max_fraction, self.fill, self.per_channel = max_fraction, fill, bool(per_channel)
        self._mask_constants: Dict[Any, Tuple[torch.Tensor, ...]] = {}

    def extra_repr(self) -> str:
        return (f"time_masks={self.time_masks}, freq_masks={self.freq_masks}, "
                f"max_fraction={self.max_fraction}, fill={self.fill!r}, per_channel={self.per_channel}, "
                f"seed={self.seed}")

    def max_width(self, length: int) -> int:
        """The widest mask on an axis of `length` cells."""
        return int(self.max_fraction * length + 1e-9)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Mask a batch of features.

        Args:
            audio: `(B, C, F, T)` floating point (C = 6 feature channels).

        Returns:
            A new tensor of the same shape and dtype (the input itself in eval mode).
        """
        _check_audio(audio)
        if not self.training or audio.shape[0] == 0:
            return audio
        batch, channels, n_freq, n_time = audio.shape
        rows = batch * channels if self.per_channel else batch
        freq, time = self.masks(rows, n_freq, n_time, audio.device)
        mask = freq[:, :, None] | time[:, None, :]
        mask = mask.view(batch, channels, n_freq, n_time) if self.per_channel else mask[:, None]
        if self.fill == "mean":
            fill = audio.mean(dim=(2, 3), keepdim=True)
        else:
            fill = audio.new_zeros(())
        return torch.where(mask, fill, audio)

    def masks(self, rows: int, n_freq: int, n_time: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """The masks of `rows` samples (or sample channels), from one draw.

        Each of a row's `freq_masks + time_masks` masks takes two uniforms from one
        `(2, rows, masks)` float32 draw: its width `floor(u * (top + 1))` (uniform over
        `0..top`) and its start `floor(u' * (length - width + 1))` (uniform over the positions
        where it fits).

        Returns:
            `(rows, n_freq)` and `(rows, n_time)` bool: the union of each row's masks per axis.
        """
        count = self.freq_masks + self.time_masks
        if count == 0 or rows == 0:
            return (torch.zeros((rows, n_freq), dtype=torch.bool, device=device),
                    torch.zeros((rows, n_time), dtype=torch.bool, device=device))
        top, length, pos = self._constants(n_freq, n_time, torch.device(device))
        u = torch.rand((2, rows, count), generator=self.generator_for(device), device=device)
        width = torch.minimum(u[0].mul(top + 1).floor_(), top)
        room = length - width
        start = torch.minimum(u[1].mul(room + 1).floor_(), room)
        hit = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # (rows, masks, max(F, T))
        return hit[:, :self.freq_masks, :n_freq].any(dim=1), hit[:, self.freq_masks:, :n_time].any(dim=1)

    def _constants(self, n_freq: int, n_time: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
        """Per mask its widest width and its axis length `(masks,)` float32, and the positions
        `(max(F, T),)` float32, on `device`: built once per shape, so that a batch on a GPU draws
        without a host-to-device copy."""
        key = (str(device), n_freq, n_time)
        cache = self._mask_constants
        if key not in cache:
            tops = [self.max_width(n_freq)] * self.freq_masks + [self.max_width(n_time)] * self.time_masks
            lengths = [n_freq] * self.freq_masks + [n_time] * self.time_masks
            cache[key] = (torch.tensor(tops, dtype=torch.float32, device=device),
                          torch.tensor(lengths, dtype=torch.float32, device=device),
                          torch.arange(max(n_freq, n_time), dtype=torch.float32, device=device))
        return cache[key]


class ChannelSwap(SeededModule):
    """Exchange the left-channel features `[0:3]` with the right-channel ones `[3:6]` (or, for
    one map per audio channel, the front end's log-mel `(B, 2, F, T)` or a waveform `(B, 2, N)`,
    channel 0 with channel 1).

    Each sample is swapped with probability `p`. The swap is its own inverse.

    Args:
        p: per-sample probability.
        seed: seed of the module-owned generators.
        generator: a generator to draw from instead.
    """

    def __init__(self, p: float = 0.5, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(seed, generator)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"expected 0 <= p <= 1, got {p!r}")
        self.p = p
        self._swap_constants: Dict[Any, Tuple[torch.Tensor, torch.Tensor]] = {}

    def extra_repr(self) -> str:
        return f"p={self.p}, left=[0:3], right=[3:6], seed={self.seed}"

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Swap the channel blocks of a random subset of samples.

        Args:
            audio: `(B, 6, F, T)` floating point, or `(B, 2, F, T)` / `(B, 2, N)`.

        Returns:
            A new tensor of the same shape (the input itself in eval mode).
        """
        if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
            raise TypeError(f"expected a floating point audio tensor, got {describe(audio)}")
        if audio.ndim not in (3, 4):
            raise ValueError(f"expected audio of shape (B, C, F, T) or (B, C, N), got {tuple(audio.shape)}")
        if audio.shape[1] not in (AUDIO_CHANNELS, 2):
            raise ValueError(f"expected {AUDIO_CHANNELS} feature channels or 2 (one per audio channel), "
                             f"got {audio.shape[1]}")
        if not self.training or audio.shape[0] == 0:
            return audio
        batch = audio.shape[0]
        swap = torch.rand((batch, 1), generator=self.generator_for(audio.device), device=audio.device) < self.p
        # Rows of the (2B, 3*F*T) block view in output order: sample b's blocks are 2b and
        # 2b + 1, read in reverse for a swapped sample (each block moves by +1 or -1). One
        # row-wise copy (index_select is as fast as a plain copy; advanced indexing was measured
        # 4-5x slower on CPU).
        blocks, step = self._constants(batch, audio.device)
        order = blocks + swap.expand(batch, 2).reshape(-1) * step
        return audio.reshape(2 * batch, -1).index_select(0, order).view(audio.shape)

    def _constants(self, batch: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """`(2B,)` int64 block rows `0..2B-1` and each block's move when swapped (+1, -1, ...),
        built once per batch size and device."""
        key = (str(device), batch)
        cache = self._swap_constants
        if key not in cache:
            blocks = torch.arange(2 * batch, device=device)
            cache[key] = (blocks, 1 - 2 * (blocks % 2))
        return cache[key]


class JointMixup(SeededModule):
    """Mix audio, both video frames and the one-hot targets of some samples with a partner.

    `round(fraction * B)` samples, chosen at random, are each mixed with a partner drawn
    uniformly from the other samples of the same batch (before any mixing):
    `x_i <- (1 - r) * x_i + r * x_partner`, with one ratio `r` per mixed sample shared by the
    audio, the frames and the target. `r` is `ratio` (the paper's fixed 0.4) or, when `alpha`
    is set, drawn per sample from Beta(alpha, alpha).

    The mixed positions and partners of a batch come from one uniform draw; the Beta ratios are
    drawn `BETA_BLOCK` at a time and consumed in order (the block and the position in it travel
    in the state dict with the generator, so a resumed run continues the same ratios). Under a
    CUDA graph the ratios are read through a device cursor (:meth:`capturing`, :meth:`advance`).

    Args:
        fraction: fraction of each batch that is mixed.
        ratio: the partner's weight, when `alpha` is None.
        alpha: Beta(alpha, alpha) parameter, or None for the fixed ratio.
        inplace: write the mixed rows into the inputs instead of copies (saves copying the
            whole batch when the caller owns the tensors, as :class:`BatchPreparer` does).
        seed: seed of the module-owned generators.
        generator: a generator to draw from instead.
    """

    def __init__(self, fraction: float = 0.2, ratio: float = 0.4, alpha: Optional[float] = None,
                 inplace: bool = False, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(seed, generator)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"expected 0 <= fraction <= 1, got {fraction!r}")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"expected 0 <= ratio <= 1, got {ratio!r}")
        if alpha is not None and not alpha > 0:
            raise ValueError(f"expected alpha > 0 or None, got {alpha!r}")
        self.fraction, self.ratio, self.alpha, self.inplace = fraction, ratio, alpha, bool(inplace)
        self._block: Optional[torch.Tensor] = None  # Beta ratios, drawn BETA_BLOCK at a time
        self._used = 0  # ratios of the block consumed
        self._pending_block: Optional[Tuple[torch.Tensor, int]] = None  # restored, not yet on a device
        self._cursor: Optional[torch.Tensor] = None  # set while a CUDA graph captures
        self._constants: Dict[Any, torch.Tensor] = {}

    def extra_repr(self) -> str:
        how = f"ratio={self.ratio}" if self.alpha is None else f"ratio~Beta({self.alpha}, {self.alpha})"
        return f"fraction={self.fraction}, {how}, inplace={self.inplace}, seed={self.seed}"

    def forward(self, audio: torch.Tensor, video: Optional[torch.Tensor],
                target: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """Mix a batch.

        Args:
            audio: `(B, C, F, T)` floating point.
            video: `(B, ...)` floating point frames (normalized), or None for audio only.
            target: `(B, K)` floating point one-hot or soft targets.

        Returns:
            `(audio, video, target)` with the same shapes: new tensors, or the inputs themselves
            when `inplace` or in eval mode.
        """
        self._check(audio, video, target)
        batch = audio.shape[0]
        count = self.count_for(batch)
        if not self.training or count == 0:
            return audio, video, target
        who, partner, ratio = self.draw(batch, count, audio.device)
        audio = _mix(audio, who, partner, ratio, self.inplace)
        video = None if video is None else _mix(video, who, partner, ratio, self.inplace)
        return audio, video, _mix(target, who, partner, ratio, self.inplace)

    def count_for(self, batch: int) -> int:
        """How many samples of a batch of `batch` are mixed: `round(fraction * batch)` (none of
        a batch of one)."""
        return int(round(self.fraction * batch + 1e-9)) if batch > 1 else 0

    def draw(self, batch: int, count: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
        """`count` mixed positions `(count,)` int64, their partners `(count,)` int64 (never the
        position itself) and ratios `(count,)` float32.

        The positions are the first `count` of a uniformly random order of the batch (an argsort
        of uniforms) and each partner is at a uniform offset of 1 to `batch - 1` from its
        position, both from one `(2, batch)` float64 draw; the ratios are the next `count` of
        the Beta block.
        """
        device = torch.device(device)
        start = self.advance(count, device) if self._cursor is None else None
        gen = self.generator_for(device)
        u = torch.rand((2, batch), generator=gen, device=device, dtype=torch.float64)
        who = u[0].argsort()[:count]
        offset = u[1, :count].mul(batch - 1).floor_().clamp_max_(batch - 2).to(torch.int64).add_(1)
        partner = (who + offset).remainder_(batch)
        if self.alpha is None:
            ratio = self._constant(count, device)
        elif self._cursor is None:
            ratio = self._block[start:start + count]
        else:  # captured: the host moves the cursor before each replay (advance)
            ratio = self._block.index_select(0, self._cursor + self._positions(count, device))
        return who, partner, ratio

    def advance(self, count: int, device: torch.device) -> int:
        """Host bookkeeping of the Beta block before a batch mixes `count` samples: refill the
        block when fewer than `count` ratios are left, then reserve `count`.

        Returns:
            Where this batch's ratios start in the block (0 without `alpha`).
        """
        if self.alpha is None:
            return 0
        device = torch.device(device)
        if self._block is None and self._pending_block is not None:
            block, used = self._pending_block
            self._block, self._used, self._pending_block = block.to(device), used, None
        if self._block is not None and self._block.device != device:
            self._block = self._block.to(device)
        if self._block is None or self._used + count > self._block.numel():
            size = max(count, -(-BETA_BLOCK // max(count, 1)) * count)
            block = beta_sample(self.alpha, size, self.generator_for(device), device)
            if self._block is not None and self._block.shape == block.shape:
                self._block.copy_(block)  # in place: a captured graph reads this memory
            else:
                self._block = block
            self._used = 0
        start = self._used
        self._used += count
        return start

    def capturing(self, cursor: Optional[torch.Tensor]) -> None:
        """Read the ratios at a device `cursor` (`()` int64 on the batch's device) from now on,
        for a CUDA graph's capture; None reads them eagerly again. While a cursor is set,
        :meth:`draw` does no host bookkeeping: call :meth:`advance` before each replay and fill
        the cursor with its result."""
        if cursor is not None and (not isinstance(cursor, torch.Tensor) or cursor.dtype != torch.int64
                                   or cursor.ndim != 0):
            raise TypeError(f"expected a () int64 tensor or None, got {describe(cursor)}")
        self._cursor = cursor

    def _positions(self, count: int, device: torch.device) -> torch.Tensor:
        key = ("positions", str(device), count)
        if key not in self._constants:
            self._constants[key] = torch.arange(count, device=device)
        return self._constants[key]

    def _constant(self, count: int, device: torch.device) -> torch.Tensor:
        key = ("ratio", str(device), count)
        if key not in self._constants:
            self._constants[key] = torch.full((count,), self.ratio, dtype=torch.float32, device=device)
        return self._constants[key]

    def get_extra_state(self) -> Dict[str, Any]:
        """The generator states, with the Beta block and how much of it is used."""
        state = super().get_extra_state()
        if self._block is not None:
            state["beta_block"] = (self._block.detach().to("cpu", copy=True), self._used)
        elif self._pending_block is not None:
            state["beta_block"] = self._pending_block
        return state

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` saved (the block moves to the device on use)."""
        super().set_extra_state(state)
        self._block, self._used = None, 0
        block = state.get("beta_block")
        self._pending_block = None if block is None else (block[0].detach().clone(), int(block[1]))

    @staticmethod
    def _check(audio: torch.Tensor, video: Optional[torch.Tensor], target: torch.Tensor) -> None:
        _check_audio(audio)
        if not isinstance(target, torch.Tensor) or not target.is_floating_point() or target.ndim != 2:
            raise TypeError(f"expected (B, K) floating point targets, got {describe(target)}")
        if target.shape[0] != audio.shape[0]:
            raise ValueError(f"expected {audio.shape[0]} target rows, got {target.shape[0]}")
        if video is not None:
            if not isinstance(video, torch.Tensor) or not video.is_floating_point():
                raise TypeError(f"expected floating point frames (normalize first), got {describe(video)}")
            if video.shape[0] != audio.shape[0]:
                raise ValueError(f"expected {audio.shape[0]} frame rows, got {video.shape[0]}")


def _mix(x: torch.Tensor, who: torch.Tensor, partner: torch.Tensor, ratio: torch.Tensor,
         inplace: bool) -> torch.Tensor:
    weight = ratio.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    # Both rows are gathered before anything is written, so a partner that is itself mixed
    # contributes its original values.
    mixed = torch.lerp(x.index_select(0, who), x.index_select(0, partner), weight)
    return x.index_copy_(0, who, mixed) if inplace else x.index_copy(0, who, mixed)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`(B,)` integer labels -> `(B, num_classes)` float32 one-hot; a label of -1 (unknown)
    gives a row of zeros. No host synchronization."""
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.ndim != 1:
        raise TypeError(f"expected (B,) integer labels, got {describe(labels)}")
    known = labels >= 0
    hot = F.one_hot(labels.clamp(0, num_classes - 1).long(), num_classes).to(torch.float32)
    return hot * known[:, None]


def _check_audio(audio: torch.Tensor) -> None:
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of audio features, got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise TypeError(f"expected floating point audio features, got {audio.dtype}")
    if audio.ndim != 4:
        raise ValueError(f"expected audio features of shape (B, C, F, T), got {tuple(audio.shape)}")
