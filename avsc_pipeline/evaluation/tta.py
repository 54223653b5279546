"""Test-time augmentation: score every batch in several variants and average the probabilities.

Transforms (:data:`TTA_TRANSFORMS`), applied to the raw batch as the loader and stage one give it:

* `swap`: the left and right audio channels exchanged within each feature kind, the six
  channels `[L, dL, ddL, R, dR, ddR]` becoming `[R, dR, ddR, L, dL, ddL]`: the index logic of
  training's :class:`~avsc_pipeline.dataio.batch_augment.ChannelSwap` (every sample swapped),
  on the stored features, which the checkpoint's per-channel statistics then normalize as any
  input (the recording as if its microphones were exchanged).
* `flip`: the uint8 frames mirrored left to right (their last axis), before normalization.

The variants are every combination of the chosen transforms, the untransformed batch among
them: `swap` scores 2 variants, `swap,flip` 4. Each variant goes through the wrapped model's
own `probabilities` (calibrated as it is: a checkpoint's or an ensemble's temperature applies
to each variant) and :class:`TTAScorer` returns their mean. Nothing is read again: the
variants are made from the batch in memory.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import torch

from avsc_pipeline.dataio.batch_augment import ChannelSwap
from avsc_pipeline.evaluation.scoring import ScorerLike

#: The transforms `--tta` accepts, in the order variants apply them.
TTA_TRANSFORMS = ("swap", "flip")


def parse_tta(values: "str | Iterable[str]") -> Tuple[str, ...]:
    """`--tta` values (repeated and/or comma-separated) as a tuple in :data:`TTA_TRANSFORMS` order.

    Raises:
        ValueError: an unknown transform (naming `--tta`).
    """
    items = [values] if isinstance(values, str) else list(values)
    names = {part.strip() for item in items for part in str(item).split(",") if part.strip()}
    unknown = sorted(names - set(TTA_TRANSFORMS))
    if unknown:
        raise ValueError(f"--tta: expected transforms among {', '.join(TTA_TRANSFORMS)}, got {', '.join(unknown)}")
    return tuple(name for name in TTA_TRANSFORMS if name in names)


def flip_frames(video: torch.Tensor) -> torch.Tensor:
    """`(..., 3, H, W)` uint8 frames mirrored left to right (a new tensor)."""
    if not isinstance(video, torch.Tensor) or video.dtype != torch.uint8 or video.ndim < 3:
        raise TypeError(f"expected uint8 frames of shape (..., 3, H, W), got {getattr(video, 'dtype', type(video))}")
    return video.flip(-1)


class TTAScorer:
    """A scorer (a :class:`~avsc_pipeline.evaluation.scoring.Scorer` or an
    :class:`~avsc_pipeline.evaluation.ensemble.Ensemble`) whose probabilities are the mean over
    the variants of each batch.

    Args:
        inner: the model to average; anything with `probabilities(batch)`,
            `probability_pair(batch)`, `eval_mode()`, `classes`, `feature_config`,
            `with_video`, `device` and `modality`.
        transforms: names out of :data:`TTA_TRANSFORMS` (see :func:`parse_tta`), at least one.

    Raises:
        ValueError: no or unknown transforms, or `flip` for a model that reads no frames.
    """

    def __init__(self, inner: ScorerLike, transforms: Sequence[str]) -> None:
        transforms = parse_tta(transforms)
        if not transforms:
            raise ValueError(f"--tta: expected at least one of {', '.join(TTA_TRANSFORMS)}, got none")
        if "flip" in transforms and not inner.with_video:
            raise ValueError("--tta flip: expected a model that reads frames, got one that scores audio only "
                             "(use --tta swap)")
        self.inner = inner
        self.transforms = transforms
        # p = 1 swaps every sample; the module's own seeded generator is drawn from, never torch's.
        self._swap = ChannelSwap(p=1.0, seed=0).train()

    classes = property(lambda self: self.inner.classes, doc="The C class names.")
    feature_config = property(lambda self: self.inner.feature_config, doc="The models' stage-one config.")
    with_video = property(lambda self: self.inner.with_video, doc="Whether scoring reads frames.")
    device = property(lambda self: self.inner.device, doc="Where scoring runs.")
    modality = property(lambda self: self.inner.modality, doc="What is scored.")
    temperature = property(lambda self: self.inner.temperature, doc="The wrapped model's temperature.")

    def eval_mode(self) -> Any:
        """The wrapped model's eval mode (a context manager)."""
        return self.inner.eval_mode()

    def swap_channels(self, audio: torch.Tensor) -> torch.Tensor:
        """`(B, 6, F, T)` features with the left and right blocks exchanged (a new tensor)."""
        return self._swap(audio)

    def variants(self, batch: Mapping[str, Any]) -> List[Dict[str, Any]]:
        """The batch under every combination of the transforms, the batch itself first."""
        out = []
        for chosen in itertools.product((False, True), repeat=len(self.transforms)):
            variant = dict(batch)
            for name, applied in zip(self.transforms, chosen):
                if applied and name == "swap":
                    variant["audio"] = self.swap_channels(variant["audio"])
                elif applied and name == "flip" and variant.get("video") is not None:
                    variant["video"] = flip_frames(variant["video"])
            out.append(variant)
        return out

    def probabilities(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """`(B, C)` float64 on the CPU: the mean of the wrapped model's probabilities over the variants."""
        return torch.stack([self.inner.probabilities(v) for v in self.variants(batch)]).mean(dim=0)

    def probability_pair(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """`(calibrated, uncalibrated)` means over the variants, each `(B, C)` float64 on the CPU."""
        pairs = [self.inner.probability_pair(v) for v in self.variants(batch)]
        return (torch.stack([p[0] for p in pairs]).mean(dim=0), torch.stack([p[1] for p in pairs]).mean(dim=0))
