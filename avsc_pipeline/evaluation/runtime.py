"""Running a checkpoint: the device, the model and the batch preparation that scoring needs.

:class:`Scorer` turns raw batches (audio features in their stored dtype, uint8 frames), as the
shard loader yields them and as stage one computes them from raw files, into class
probabilities with exactly the model path of training's validation: a
:class:`~avsc_pipeline.dataio.preparation.BatchPreparer` in eval mode with the checkpoint's
audio statistics and the video backbone's frame mean and std, the model in eval mode, and a
softmax in float64. `avsc-eval` (:mod:`.evaluate`) and `avsc-predict` (:mod:`.predict`) share
it, so their probabilities agree.

With `modality="audio"` (or `"video"`) a joint checkpoint's other embedding is replaced by its
mean over the training set, stored in the checkpoint (`embedding_means`), which shows what
each modality contributes on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple

import torch

from avsc_pipeline.config import FeatureConfig, from_dict
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.stats import AudioStats
from avsc_pipeline.models.checkpoint import load_checkpoint, model_from_checkpoint
from avsc_pipeline.models.classifier import SceneClassifier
from avsc_pipeline.devices import pick_device

#: `both` uses what the checkpoint's stage uses; `audio`/`video` keep one modality of a joint model.
MODALITIES = ("both", "audio", "video")


def checkpoint_config_hash(ckpt: Mapping[str, Any]) -> str:
    """16 hex digits identifying a checkpoint's resolved config sections (as `config_hash` does
    for one section: SHA-256 of the key-sorted, compact JSON)."""
    blob = json.dumps(ckpt["config"], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Scorer:
    """A checkpoint's model ready to score raw batches on one device.

    Attributes:
        model: the classifier, in eval mode on `device`.
        preparer: normalization only (eval mode), on `device`.
        classes: the C class names, in the logits' order.
        feature_config: the stage-one config the model's features were made with.
        modality: one of :data:`MODALITIES`.
        replaced: the stored mean embedding standing in for each dropped modality,
            `{"audio": (D_A,)}` or `{"video": (D_V,)}` float32 on `device`; empty for `both`.
        device: where scoring runs.
    """

    model: SceneClassifier
    preparer: BatchPreparer
    classes: List[str]
    feature_config: FeatureConfig
    modality: str
    replaced: Dict[str, torch.Tensor]
    device: torch.device

    @property
    def with_video(self) -> bool:
        """Whether scoring reads frames (the model uses video and it is not replaced)."""
        return self.model.uses_video and "video" not in self.replaced

    @property
    def stage(self) -> str:
        """The checkpoint's stage: `audio`, `video` or `joint`."""
        return self.model.stage

    @torch.no_grad()
    def probabilities(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Class probabilities of one raw batch.

        Args:
            batch: `audio (B, 6, F, T)` float16/float32 as stored, `video (B, K, 3, H, W)` uint8
                when :attr:`with_video`, and optionally `label (B,)` int64 (-1 where unknown).

        Returns:
            `(B, C)` float64 on the CPU: the softmax of the logits, computed in float64.
        """
        audio = batch["audio"]
        label = batch.get("label")
        if label is None:
            label = torch.full((audio.shape[0],), -1, dtype=torch.int64)
        raw = {"audio": audio, "label": label}
        if self.with_video:
            if batch.get("video") is None:
                raise ValueError(f"expected frames for a {self.stage!r} checkpoint, got a batch without video")
            raw["video"] = batch["video"]
        prepared = self.preparer(raw)
        model, size = self.model, audio.shape[0]
        e_audio = e_video = None
        if model.uses_audio:
            e_audio = self._stand_in("audio", size) if "audio" in self.replaced else model.embed_audio(
                prepared["audio"])
        if model.uses_video:
            e_video = self._stand_in("video", size) if "video" in self.replaced else model.embed_video(
                prepared["video"])
        logits = model.classify(e_audio, e_video)
        return torch.softmax(logits.double(), dim=1).cpu()

    def _stand_in(self, part: str, size: int) -> torch.Tensor:
        return self.replaced[part].unsqueeze(0).expand(size, -1)


def load_scorer(ckpt_path: "str | os.PathLike[str]", device: "str | torch.device" = "auto",
                modality: str = "both") -> Tuple[Scorer, Dict[str, Any]]:
    """Read a checkpoint and build its :class:`Scorer`.

    Args:
        ckpt_path: a checkpoint written by the trainer (`best.pt`, `last.pt`).
        device: `auto`, `cpu`, `cuda`, `cuda:N` or a torch.device.
        modality: one of :data:`MODALITIES`; `audio` or `video` needs a joint checkpoint with
            stored `embedding_means`.

    Returns:
        The scorer and the checkpoint dict.

    Raises:
        CheckpointError: a missing, truncated, corrupt or foreign file (one line naming it).
        ValueError: a modality the checkpoint cannot give, or a device that is not there.
    """
    if modality not in MODALITIES:
        raise ValueError(f"expected modality in {MODALITIES}, got {modality!r}")
    device = device if isinstance(device, torch.device) else pick_device(device)
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    model = model_from_checkpoint(ckpt, device)
    replaced = _stand_ins(ckpt, model, modality, str(ckpt_path))
    stats = _audio_stats(ckpt, model, str(ckpt_path))
    preparer = BatchPreparer(len(ckpt["classes"]), stats, (model.frame_mean, model.frame_std)).to(device).eval()
    features = from_dict(FeatureConfig, ckpt["feature_config"], source=f"{ckpt_path}: feature_config")
    scorer = Scorer(model, preparer, list(ckpt["classes"]), features, modality,
                    {k: v.to(device) for k, v in replaced.items()}, device)
    return scorer, ckpt


def _stand_ins(ckpt: Dict[str, Any], model: SceneClassifier, modality: str, source: str) -> Dict[str, torch.Tensor]:
    """The stored mean embedding of the modality that `modality` drops (none for `both`)."""
    if modality == "both":
        return {}
    if model.stage != "joint":
        raise ValueError(
            f"{source}: --modality {modality} needs a joint checkpoint, got stage {model.stage!r} "
            f"(it uses {model.stage} only; score it with --modality both)"
        )
    dropped = "video" if modality == "audio" else "audio"
    means = ckpt.get("embedding_means") or {}
    mean = means.get(dropped) if isinstance(means, dict) else None
    if mean is None:
        raise ValueError(
            f"{source}: --modality {modality} needs the training-set mean {dropped} embedding, "
            f"got none in the checkpoint (embedding_means is stored when training finishes)"
        )
    width = (model.video if dropped == "video" else model.audio).embed_dim
    if not isinstance(mean, torch.Tensor) or tuple(mean.shape) != (width,):
        raise ValueError(
            f"{source}: expected embedding_means[{dropped!r}] of shape ({width},), got "
            f"{tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__}"
        )
    return {dropped: mean.detach().to(torch.float32)}


def _audio_stats(ckpt: Dict[str, Any], model: SceneClassifier, source: str) -> AudioStats:
    """The checkpoint's audio statistics; a video-only model without them normalizes nothing it uses."""
    data = ckpt.get("audio_stats")
    if data is not None:
        return AudioStats.from_json(data, f"{source}: audio_stats")
    if model.uses_audio:
        raise ValueError(f"{source}: expected audio_stats for a {model.stage!r} checkpoint, got None")
    channels = from_dict(FeatureConfig, ckpt["feature_config"], source=f"{source}: feature_config").audio_shape[0]
    return AudioStats((0.0,) * channels, (1.0,) * channels, 0, "", ())
