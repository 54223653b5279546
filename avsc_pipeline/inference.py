"""The one forward path: raw batch -> batch preparer -> classifier, in one memory format, under
one autocast.

:class:`Inference` holds the four things every forward needs, decided once: the
:class:`~avsc_pipeline.dataio.preparation.BatchPreparer` (augmenting in train mode, normalizing
always), the :class:`~avsc_pipeline.models.classifier.SceneClassifier`, the memory format
(channels-last on CUDA when the run asks for it, :func:`use_channels_last`) and the autocast
dtype. The trainer's step, the :class:`~avsc_pipeline.evaluation.scoring.Scorer` (training's
validation, `avsc-eval`, `avsc-predict`), the embedding cache and the benchmarks all run their
forwards through it, so they cannot drift apart; it is also the path a CUDA graph captures.

It sits between the models and their users: it imports `dataio` (the preparer) and `models`,
and is imported by `training` and `evaluation`, never the other way round.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Mapping, Optional

import torch

from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.devices import autocast
from avsc_pipeline.models.classifier import SceneClassifier


def use_channels_last(device: torch.device, wanted: bool) -> bool:
    """Whether to run in channels-last memory format: on CUDA when the run asks for it
    (`train.channels_last`, default true). The one place this is decided."""
    return torch.device(device).type == "cuda" and bool(wanted)


class Inference:
    """A model, its batch preparer, memory format and precision on one device.

    Args:
        model: the classifier; moved to channels-last here when `channels_last`.
        preparer: the batch preparer on `device`, built from the model's own frame statistics
            (`model.frame_mean`, `model.frame_std`).
        device: where the forward runs.
        precision: the autocast dtype (None: float32), `devices.amp_dtype` of `train.amp`.
        channels_last: the wish (`train.channels_last`); honoured on CUDA only.
    """

    def __init__(self, model: SceneClassifier, preparer: BatchPreparer, device: "torch.device | str",
                 precision: Optional[torch.dtype] = None, channels_last: bool = False) -> None:
        if not isinstance(preparer, BatchPreparer):
            raise TypeError(f"expected a BatchPreparer, got {type(preparer).__name__}")
        self.model, self.preparer = model, preparer
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = use_channels_last(self.device, channels_last)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator["Inference"]:
        """Model and preparer in eval mode for the block, as they were afterwards."""
        was = self.model.training, self.preparer.training
        self.model.eval()
        self.preparer.eval()
        try:
            yield self
        finally:
            self.model.train(was[0])
            self.preparer.train(was[1])

    def prepare(self, raw: Mapping[str, Any]) -> Dict[str, Any]:
        """One raw loader batch -> augmented (train mode) and normalized tensors on the device.

        Args:
            raw: `audio (B, 6, F, T)` float16/float32 as stored, `label (B,)` int64, optionally
                `video (B, K, 3, H, W)` uint8 and `index (B,)` int64.

        Returns:
            The preparer's batch: `audio` float32, `video` float32 (when given), `label`, and
            `target (B, C)` float32.
        """
        return self.preparer(raw)

    def logits(self, prepared: Mapping[str, Any], given: Optional[Mapping[str, torch.Tensor]] = None,
               module: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """The classifier's logits of a prepared batch, `(B, C)` in the autocast dtype.

        Args:
            prepared: from :meth:`prepare`.
            given: embeddings that replace an extractor, `{"audio": (B, D_A), "video": (B, D_V)}`
                (a frozen extractor's cache, or a stand-in mean); the input they replace is not
                read.
            module: what to call instead of the bare model (its DDP or compiled wrapper in
                training); the same forward signature.
        """
        given = dict(given or {})
        audio = None if "audio" in given else prepared["audio"]
        if audio is not None and self.channels_last:
            audio = audio.contiguous(memory_format=torch.channels_last)
        video = None if "video" in given else prepared.get("video")
        with autocast(self.device, self.precision):
            return (module or self.model)(audio, video, e_audio=given.get("audio"), e_video=given.get("video"))

    def embeddings(self, part: str, prepared: Mapping[str, Any]) -> torch.Tensor:
        """One extractor's embeddings of a prepared batch, `(B, D)` float32 (E_A for `audio`,
        E_V for `video`), under the same precision and memory format as :meth:`logits`."""
        if part == "audio":
            audio = prepared["audio"]
            if self.channels_last:
                audio = audio.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                return self.model.embed_audio(audio).float()
        if part == "video":
            with autocast(self.device, self.precision):
                return self.model.embed_video(prepared["video"]).float()
        raise ValueError(f"expected part 'audio' or 'video', got {part!r}")
