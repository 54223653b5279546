"""The scene classifier for one stage (audio, video or joint) and its factory.

    audio: logits = FCNN(audio)                                   (its own attention head)
    video: logits = MLP(E_V),          E_V = sum_k backbone(frame_k)
    joint: logits = MLP([E_A, E_V]),   E_A = FCNN.embed(audio)    (`model.audio_embedding`)

`embed_audio`, `embed_video` and `classify` split `forward` so that a trainer can cache the
embeddings of frozen extractors and an evaluator can replace one modality's embedding by a
stored mean.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .config import STAGES, ModelConfig
from .fusion import MLPHead
from .registry import AUDIO_EXTRACTORS
from .video import IMAGENET_MEAN, IMAGENET_STD, VideoExtractor, build_backbone
from .weights import load_backbone_weights

logger = logging.getLogger(__name__)


class SceneClassifier(nn.Module):
    """Audio, video or joint scene classifier.

    Args:
        stage: "audio", "video" or "joint".
        audio: the audio extractor (FCNN) for the audio and joint stages, else None.
        video: the video extractor for the video and joint stages, else None.
        head: the MLP head for the video and joint stages, else None (the FCNN has its own).
    """

    def __init__(
        self,
        stage: str,
        audio: Optional[nn.Module] = None,
        video: Optional[VideoExtractor] = None,
        head: Optional[MLPHead] = None,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"expected stage in {STAGES}, got {stage!r}")
        needs = {"audio": (True, False, False), "video": (False, True, True),
                 "joint": (True, True, True)}[stage]
        have = (audio is not None, video is not None, head is not None)
        if needs != have:
            raise ValueError(
                f"expected (audio, video, head) present = {needs} for stage {stage!r}, got {have}"
            )
        self.stage = stage
        self.audio = audio
        self.video = video
        self.head = head
        self.frozen_audio = False
        self.frozen_video = False

    @property
    def uses_audio(self) -> bool:
        """Whether this stage reads the audio features."""
        return self.audio is not None

    @property
    def uses_video(self) -> bool:
        """Whether this stage reads the video frames."""
        return self.video is not None

    @property
    def frame_mean(self) -> Tuple[float, float, float]:
        """RGB mean ([0, 1] scale) that frames must be normalized with (ImageNet without video)."""
        return self.video.frame_mean if self.video is not None else IMAGENET_MEAN

    @property
    def frame_std(self) -> Tuple[float, float, float]:
        """RGB std ([0, 1] scale) that frames must be normalized with (ImageNet without video)."""
        return self.video.frame_std if self.video is not None else IMAGENET_STD

    def embed_audio(self, audio: Optional[Tensor]) -> Tensor:
        """E_A; in the audio stage, the FCNN's logits.

        Args:
            audio: `(B, C, F, T)` float features, e.g. `(B, 6, 128, 39)`.

        Returns:
            `(B, D_A)`: joint stage per `audio_embedding`, audio stage `(B, num_classes)`.
        """
        if self.audio is None:
            raise ValueError(f"expected a stage with audio, got stage {self.stage!r}")
        if audio is None:
            raise ValueError(f"expected audio features for stage {self.stage!r}, got None")
        # A frozen extractor needs no graph; this saves the activations' memory.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_audio):
            return self.audio(audio) if self.stage == "audio" else self.audio.embed(audio)

    def embed_video(self, video: Optional[Tensor]) -> Tensor:
        """E_V: `(B, K, 3, H, W)` normalized float frames -> `(B, D_V)`."""
        if self.video is None:
            raise ValueError(f"expected a stage with video, got stage {self.stage!r}")
        if video is None:
            raise ValueError(f"expected video frames for stage {self.stage!r}, got None")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_video):
            return self.video(video)

    def classify(self, e_audio: Optional[Tensor], e_video: Optional[Tensor]) -> Tensor:
        """Logits from embeddings (an embedding the stage does not use may be None).

        Args:
            e_audio: `(B, D_A)` from :meth:`embed_audio` (audio and joint stages).
            e_video: `(B, D_V)` from :meth:`embed_video` (video and joint stages).

        Returns:
            `(B, num_classes)` logits.
        """
        if self.uses_audio and e_audio is None:
            raise ValueError(f"expected an audio embedding for stage {self.stage!r}, got None")
        if self.uses_video and e_video is None:
            raise ValueError(f"expected a video embedding for stage {self.stage!r}, got None")
        if self.stage == "audio":
            return e_audio
        if self.stage == "video":
            return self.head(e_video)
        if e_audio.shape[0] != e_video.shape[0]:
            raise ValueError(
                f"expected audio and video embeddings of one batch size, "
                f"got {e_audio.shape[0]} and {e_video.shape[0]}"
            )
        return self.head(torch.cat([e_audio, e_video], dim=1))

    def forward(self, audio: Optional[Tensor] = None, video: Optional[Tensor] = None) -> Tensor:
        """Logits for a batch of segments.

        Args:
            audio: `(B, C, F, T)` float features, or None for the video stage.
            video: `(B, K, 3, H, W)` normalized float frames, or None for the audio stage.

        Returns:
            `(B, num_classes)` logits.
        """
        e_audio = self.embed_audio(audio) if self.uses_audio else None
        e_video = self.embed_video(video) if self.uses_video else None
        return self.classify(e_audio, e_video)

    def set_frozen(self, audio: bool = False, video: bool = False) -> None:
        """Freeze (or unfreeze) extractors: no gradients, and eval mode even when training.

        Eval mode keeps BatchNorm running statistics and dropout fixed, so a frozen extractor's
        tensors do not change at all.
        """
        if audio and self.audio is None:
            raise ValueError(f"expected a stage with audio to freeze it, got stage {self.stage!r}")
        if video and self.video is None:
            raise ValueError(f"expected a stage with video to freeze it, got stage {self.stage!r}")
        self.frozen_audio = bool(audio)
        self.frozen_video = bool(video)
        for module, frozen in ((self.audio, self.frozen_audio), (self.video, self.frozen_video)):
            if module is not None:
                module.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "SceneClassifier":
        """Set training mode, keeping frozen extractors in eval mode."""
        super().train(mode)
        if self.frozen_audio and self.audio is not None:
            self.audio.eval()
        if self.frozen_video and self.video is not None:
            self.video.eval()
        return self


def build_video_extractor(config: ModelConfig, load_weights: bool = True) -> VideoExtractor:
    """Build the configured video backbone, with its weights per `config.video_weights`.

    Args:
        config: the `model:` section.
        load_weights: False builds a randomly initialized backbone whatever the config says
            (e.g. before loading a checkpoint that holds all weights).
    """
    source = config.video_weights if load_weights else None
    named = source in ("torchvision", "timm")
    backbone, spec = build_backbone(config.video, pretrained=named)
    if named:
        logger.info("video backbone %s: %s named pretrained weights", config.video, source)
    elif source is not None:
        load_backbone_weights(backbone, spec, source, allow_unsafe=config.video_weights_unsafe)
    elif load_weights:
        logger.warning("video backbone %s: no pre-trained weights (random initialization)",
                       config.video)
    return VideoExtractor(backbone, spec, name=config.video)


def build_model(
    config: ModelConfig, stage: str, num_classes: int, audio_channels: int = 6,
    load_weights: bool = True,
) -> SceneClassifier:
    """Build the scene classifier for one stage.

    Args:
        config: the `model:` section.
        stage: "audio", "video" or "joint".
        num_classes: number of scene classes.
        audio_channels: C of the `(B, C, F, T)` audio features.
        load_weights: load video weights per `config.video_weights` (when the stage uses video).

    Returns:
        A :class:`SceneClassifier` in training mode.
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"expected a ModelConfig, got {type(config).__name__}")
    if stage not in STAGES:
        raise ValueError(f"expected stage in {STAGES}, got {stage!r}")
    for name, value in (("num_classes", num_classes), ("audio_channels", audio_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"expected {name} to be a positive int, got {value!r}")
    audio = video = head = None
    if stage in ("audio", "joint"):
        audio = AUDIO_EXTRACTORS[config.audio].from_config(config, audio_channels, num_classes)
    if stage in ("video", "joint"):
        video = build_video_extractor(config, load_weights)
        in_dim = video.embed_dim + (audio.embed_dim if audio is not None else 0)
        head = MLPHead(in_dim, config.fusion_hidden, num_classes, config.fusion_dropout)
    return SceneClassifier(stage, audio=audio, video=video, head=head)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with `requires_grad`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
