"""Running a model: the one path from raw batches to class probabilities.

:class:`Scorer` turns raw batches (audio features in their stored dtype, uint8 frames), as the
shard loader yields them and as stage one computes them from raw files, into class
probabilities: a :class:`~avsc_pipeline.dataio.preparation.BatchPreparer` in eval mode, the
model's one forward in eval mode under the run's precision policy
(:func:`avsc_pipeline.devices.amp_dtype` of `train.amp`: bf16 autocast on a GPU that has it,
float32 on the CPU), and a softmax in float64. Training's validation, `avsc-eval`
(:mod:`.evaluate`) and `avsc-predict` (:mod:`.predict`) all score through it, so their figures
agree.

With `modality="audio"` (or `"video"`) a joint model's other embedding is replaced by its
mean over the training set, stored in the checkpoint (`embedding_means`), which shows what
each modality contributes on its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from avsc_pipeline.config import from_dict
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.stats import AudioStats
from avsc_pipeline.devices import amp_dtype, autocast, pick_device
from avsc_pipeline.features.config import FeatureConfig
from avsc_pipeline.models.checkpoint import ModelArtifact, load_checkpoint, model_from_artifact
from avsc_pipeline.models.classifier import SceneClassifier
from avsc_pipeline.models.config import MODALITIES


def checkpoint_config_hash(artifact: ModelArtifact) -> str:
    """16 hex digits identifying a checkpoint's resolved config sections (as `config_hash` does
    for one section: SHA-256 of the key-sorted, compact JSON)."""
    blob = json.dumps(artifact.config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Scorer:
    """A model ready to score raw batches on one device.

    Attributes:
        model: the classifier on `device`.
        preparer: the batch preparation on `device` (used in eval mode: normalization only).
        classes: the C class names, in the logits' order.
        feature_config: the stage-one config the model's features were made with.
        modality: what is scored: the model's own modality, or `audio`/`video` of a joint model.
        device: where scoring runs.
        precision: the autocast dtype (None: float32).
        stand_ins: the stored mean embedding standing in for each dropped modality,
            `{"audio": (D_A,)}` or `{"video": (D_V,)}` float32 on `device`.
        cached: embedding tables `(N, D)` float32 on `device` of frozen extractors, indexed by
            the batch's `index` (training's cache); the inputs they replace are not read.
        temperature: the logits are divided by it before the softmax (1.0: uncalibrated).
        channels_last: the model's weights and the audio features in channels-last memory
            format (the run's `train.channels_last` on CUDA: the layout training used).
    """

    model: SceneClassifier
    preparer: BatchPreparer
    classes: List[str]
    feature_config: FeatureConfig
    modality: str
    device: torch.device
    precision: Optional[torch.dtype] = None
    stand_ins: Dict[str, torch.Tensor] = field(default_factory=dict)
    cached: Dict[str, torch.Tensor] = field(default_factory=dict)
    temperature: float = 1.0
    channels_last: bool = False

    @property
    def with_video(self) -> bool:
        """Whether scoring reads frames (the model uses video, neither replaced nor cached)."""
        return self.model.uses_video and "video" not in self.stand_ins and "video" not in self.cached

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator["Scorer"]:
        """Model and preparer in eval mode for the block, as they were afterwards."""
        was = self.model.training, self.preparer.training
        self.model.eval()
        self.preparer.eval()
        try:
            yield self
        finally:
            self.model.train(was[0])
            self.preparer.train(was[1])

    @torch.no_grad()
    def logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits of one raw batch, `(B, C)` float32 on the device (call within :meth:`eval_mode`).

        Args:
            batch: `audio (B, 6, F, T)` float16/float32 as stored, `video (B, K, 3, H, W)` uint8
                when :attr:`with_video`, optionally `label (B,)` int64 (-1 where unknown) and,
                with :attr:`cached` tables, `index (B,)` int64 rows.
        """
        audio = batch["audio"]
        size = audio.shape[0]
        label = batch.get("label")
        raw = {"audio": audio, "label": torch.full((size,), -1, dtype=torch.int64) if label is None else label}
        if "index" in batch:
            raw["index"] = batch["index"]
        if self.with_video:
            if batch.get("video") is None:
                raise ValueError(f"expected frames for a {self.model.modality!r} model, got a batch without video")
            raw["video"] = batch["video"]
        prepared = self.preparer(raw)
        given: Dict[str, torch.Tensor] = {}
        for part in ("audio", "video"):
            if part in self.stand_ins:
                given[part] = self.stand_ins[part].unsqueeze(0).expand(size, -1)
            elif part in self.cached:
                given[part] = self.cached[part][batch["index"].to(self.device)]
        audio = prepared["audio"] if "audio" not in given else None
        if audio is not None and self.channels_last:
            audio = audio.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            logits = self.model(audio, prepared.get("video"), e_audio=given.get("audio"), e_video=given.get("video"))
        return logits.float()

    def probabilities(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Class probabilities of one raw batch: `(B, C)` float64 on the CPU, the softmax of the
        logits divided by :attr:`temperature`, computed in float64."""
        return torch.softmax(self.logits(batch).double() / self.temperature, dim=1).cpu()

    def log_probability_pair(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of one raw batch from one forward: `(calibrated, uncalibrated)`,
        each `(B, C)` float64 on the CPU (the log-softmax of the logits divided by
        :attr:`temperature`, and of the logits as they are)."""
        logits = self.logits(batch).double()
        return torch.log_softmax(logits / self.temperature, dim=1).cpu(), torch.log_softmax(logits, dim=1).cpu()

    def probability_pair(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """`(calibrated, uncalibrated)` probabilities of one raw batch, each `(B, C)` float64 on
        the CPU, from one forward (what evaluation reports as `log_loss` and
        `log_loss_uncalibrated`)."""
        calibrated, uncalibrated = self.log_probability_pair(batch)
        return calibrated.exp(), uncalibrated.exp()


def load_scorer(ckpt_path: "str | os.PathLike[str]", device: "str | torch.device" = "auto",
                modality: Optional[str] = None, calibrated: bool = True) -> Tuple[Scorer, ModelArtifact]:
    """Read a checkpoint and build its :class:`Scorer`.

    Args:
        ckpt_path: a checkpoint written by the trainer (`best.pt`, `last.pt`).
        device: `auto`, `cpu`, `cuda`, `cuda:N` or a torch.device.
        modality: None (the model's own), or `audio`/`video` for one modality of a joint
            checkpoint with stored `embedding_means`.
        calibrated: divide the logits by the checkpoint's temperature (fitted on the run's
            validation rows); False scores them as the model gives them.

    Returns:
        The scorer (in eval mode) and the checkpoint's artifact.

    Raises:
        CheckpointError: a missing, truncated, corrupt or foreign file (one line naming it).
        ValueError: a modality the checkpoint cannot give, or a device that is not there.
    """
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"expected modality in {MODALITIES}, got {modality!r}")
    device = device if isinstance(device, torch.device) else pick_device(device)
    artifact = load_checkpoint(ckpt_path, map_location="cpu").artifact
    model = model_from_artifact(artifact, device)
    source = str(ckpt_path)
    scored = modality or model.modality
    stand_ins = _stand_ins(artifact, model, scored, source)
    stats = _audio_stats(artifact, model, source)
    preparer = BatchPreparer(len(artifact.classes), stats, (model.frame_mean, model.frame_std)).to(device).eval()
    features = from_dict(FeatureConfig, artifact.feature_config, source=f"{source}: config.features")
    train = artifact.config.get("train") or {}
    # The layout and precision training validated with: one policy for both.
    channels_last = device.type == "cuda" and bool(train.get("channels_last", True))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    scorer = Scorer(model, preparer, list(artifact.classes), features, scored, device,
                    precision=amp_dtype(train.get("amp", "auto"), device),
                    stand_ins={k: v.to(device) for k, v in stand_ins.items()},
                    temperature=artifact.temperature if calibrated else 1.0, channels_last=channels_last)
    return scorer, artifact


def _stand_ins(artifact: ModelArtifact, model: SceneClassifier, modality: str,
               source: str) -> Dict[str, torch.Tensor]:
    """The stored mean embedding of the modality that `modality` drops (none for the model's own)."""
    if modality == model.modality:
        return {}
    if model.modality != "joint":
        raise ValueError(
            f"{source}: --modality {modality} needs a joint checkpoint, got an {model.modality} model "
            f"(score it with --modality {model.modality})"
        )
    if modality == "joint":
        return {}
    dropped = "video" if modality == "audio" else "audio"
    means = artifact.embedding_means or {}
    mean = means.get(dropped) if isinstance(means, dict) else None
    if mean is None:
        raise ValueError(
            f"{source}: --modality {modality} needs the training-set mean {dropped} embedding, "
            f"got none in the checkpoint (embedding_means is stored with every checkpoint of a joint run)"
        )
    width = (model.video if dropped == "video" else model.audio).embed_dim
    if not isinstance(mean, torch.Tensor) or tuple(mean.shape) != (width,):
        raise ValueError(
            f"{source}: expected embedding_means[{dropped!r}] of shape ({width},), got "
            f"{tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__}"
        )
    return {dropped: mean.detach().to(torch.float32)}


def _audio_stats(artifact: ModelArtifact, model: SceneClassifier, source: str) -> Optional[AudioStats]:
    """The statistics the run standardized its audio with, or None when it fed the features as
    stored (`loader.audio_normalize: none`) or the model reads no audio."""
    from avsc_pipeline.dataio.config import LoaderConfig

    if artifact.audio_stats is not None:
        return AudioStats.from_json(artifact.audio_stats, f"{source}: audio_stats")
    loader = from_dict(LoaderConfig, dict(artifact.config.get("loader") or {}), source=f"{source}: config.loader")
    if model.uses_audio and loader.audio_normalize == "standardize":
        raise ValueError(f"{source}: expected audio_stats for a {model.modality!r} checkpoint that standardizes its "
                         "audio, got None")
    return None
