"""The scene classifier of one modality (audio, video or joint) and its factory.

    audio: logits = FCNN(audio)                                   (its own attention head; CNN14: a
                                                                   linear head on E_A)
    video: logits = MLP(E_V),          E_V = sum_k backbone(frame_k)
    joint: logits = MLP([E_A, E_V]),   E_A = FCNN.embed(audio)    (`model.audio_embedding`), or the
                                                                   mean of CNN14's per-channel fc1

One forward serves training, validation, evaluation and prediction: it takes the inputs, or an
extractor's embeddings where they are already known (a trainer's cache of a frozen extractor,
an evaluator's stored mean standing in for one modality).
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from avsc_pipeline.sections.model import MODALITIES, ModelConfig
from .fusion import MLPHead
from .registry import create_audio_extractor, create_video_extractor
from .video import IMAGENET_MEAN, IMAGENET_STD, VideoExtractor

logger = logging.getLogger(__name__)


class SceneClassifier(nn.Module):
    """Audio, video or joint scene classifier.

    Args:
        modality: "audio", "video" or "joint".
        audio: the audio extractor (FCNN) for the audio and joint models, else None.
        video: the video extractor for the video and joint models, else None.
        head: the MLP head for the video and joint models, else None (the FCNN has its own).
    """

    def __init__(
        self,
        modality: str,
        audio: Optional[nn.Module] = None,
        video: Optional[VideoExtractor] = None,
        head: Optional[MLPHead] = None,
    ) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"expected modality in {MODALITIES}, got {modality!r}")
        needs = {"audio": (True, False, False), "video": (False, True, True),
                 "joint": (True, True, True)}[modality]
        have = (audio is not None, video is not None, head is not None)
        if needs != have:
            raise ValueError(
                f"expected (audio, video, head) present = {needs} for modality {modality!r}, got {have}"
            )
        self.modality = modality
        self.audio = audio
        self.video = video
        self.head = head
        self.frozen_audio = False
        self.frozen_video = False
        self._freeze_unused()

    @property
    def uses_audio(self) -> bool:
        """Whether this model reads the audio features."""
        return self.audio is not None

    @property
    def uses_video(self) -> bool:
        """Whether this model reads the video frames."""
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
        """E_A; for the audio modality, the FCNN's logits.

        Args:
            audio: `(B, C, F, T)` float features, e.g. `(B, 6, 128, 39)`.

        Returns:
            `(B, D_A)`: joint per `audio_embedding`, audio `(B, num_classes)`.
        """
        if self.audio is None:
            raise ValueError(f"expected a model with audio, got modality {self.modality!r}")
        if audio is None:
            raise ValueError(f"expected audio features for modality {self.modality!r}, got None")
        # A frozen extractor needs no graph; this saves the activations' memory.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_audio):
            return self.audio(audio) if self.modality == "audio" else self.audio.embed(audio)

    def embed_video(self, video: Optional[Tensor]) -> Tensor:
        """E_V: `(B, K, 3, H, W)` normalized float frames -> `(B, D_V)`."""
        if self.video is None:
            raise ValueError(f"expected a model with video, got modality {self.modality!r}")
        if video is None:
            raise ValueError(f"expected video frames for modality {self.modality!r}, got None")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_video):
            return self.video(video)

    def classify(self, e_audio: Optional[Tensor], e_video: Optional[Tensor]) -> Tensor:
        """Logits from embeddings (an embedding the model does not use may be None).

        Args:
            e_audio: `(B, D_A)` from :meth:`embed_audio` (audio and joint models).
            e_video: `(B, D_V)` from :meth:`embed_video` (video and joint models).

        Returns:
            `(B, num_classes)` logits.
        """
        if self.uses_audio and e_audio is None:
            raise ValueError(f"expected an audio embedding for modality {self.modality!r}, got None")
        if self.uses_video and e_video is None:
            raise ValueError(f"expected a video embedding for modality {self.modality!r}, got None")
        if self.modality == "audio":
            return e_audio
        if self.modality == "video":
            return self.head(e_video)
        if e_audio.shape[0] != e_video.shape[0]:
            raise ValueError(
                f"expected audio and video embeddings of one batch size, "
                f"got {e_audio.shape[0]} and {e_video.shape[0]}"
            )
        return self.head(torch.cat([e_audio, e_video], dim=1))

    def forward(self, audio: Optional[Tensor] = None, video: Optional[Tensor] = None, *,
                e_audio: Optional[Tensor] = None, e_video: Optional[Tensor] = None) -> Tensor:
        """Logits for a batch of segments: the one model path of training and scoring.

        Args:
            audio: `(B, C, F, T)` float features (audio and joint models), unused where
                `e_audio` is given.
            video: `(B, K, 3, H, W)` normalized float frames (video and joint models), unused
                where `e_video` is given.
            e_audio: `(B, D_A)` audio embeddings already computed (a cache or a stand-in).
            e_video: `(B, D_V)` video embeddings already computed.

        Returns:
            `(B, num_classes)` logits.
        """
        if self.uses_audio and e_audio is None:
            e_audio = self.embed_audio(audio)
        if self.uses_video and e_video is None:
            e_video = self.embed_video(video)
        return self.classify(e_audio if self.uses_audio else None, e_video if self.uses_video else None)

    def set_frozen(self, audio: bool = False, video: bool = False) -> None:
        """Freeze (or unfreeze) extractors: no gradients, and eval mode even when training.

        Eval mode keeps BatchNorm running statistics and dropout fixed, so a frozen extractor's
        tensors do not change at all.
        """
        if audio and self.audio is None:
            raise ValueError(f"expected a model with audio to freeze it, got modality {self.modality!r}")
        if video and self.video is None:
            raise ValueError(f"expected a model with video to freeze it, got modality {self.modality!r}")
        self.frozen_audio = bool(audio)
        self.frozen_video = bool(video)
        for module, frozen in ((self.audio, self.frozen_audio), (self.video, self.frozen_video)):
            if module is not None:
                module.requires_grad_(not frozen)
        self._freeze_unused()
        self.train(self.training)

    def _freeze_unused(self) -> None:
        """No gradient for extractor parts the joint forward never reaches."""
        if self.modality == "joint" and hasattr(self.audio, "unused_in_embedding"):
            for module in self.audio.unused_in_embedding():
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> "SceneClassifier":
        """Set training mode, keeping frozen extractors in eval mode."""
        super().train(mode)
        if self.frozen_audio and self.audio is not None:
            self.audio.eval()
        if self.frozen_video and self.video is not None:
            self.video.eval()
        return self


def build_model(config: ModelConfig, num_classes: int, audio_channels: int = 6,
                load_weights: bool = True) -> SceneClassifier:
    """Build the scene classifier of `config.modality`.

    Args:
        config: the `model:` section.
        num_classes: number of scene classes.
        audio_channels: C of the `(B, C, F, T)` audio features.
        load_weights: load pre-trained weights per `config.video_weights` and
            `config.audio_weights` (where the model uses them); False leaves every extractor
            at its initialization (a checkpoint that holds all weights follows).

    Returns:
        A :class:`SceneClassifier` in training mode.

    Raises:
        ValueError: an unknown extractor or backbone name, or unreadable weights.
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"expected a ModelConfig, got {type(config).__name__}")
    for name, value in (("num_classes", num_classes), ("audio_channels", audio_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"expected {name} to be a positive int, got {value!r}")
    audio = video = head = None
    if config.uses_audio:
        audio = create_audio_extractor(config, audio_channels, num_classes, load_weights)
    if config.uses_video:
        video = create_video_extractor(config, load_weights)
        in_dim = video.embed_dim + (audio.embed_dim if audio is not None else 0)
        head = MLPHead(in_dim, config.fusion_hidden, num_classes, config.fusion_dropout)
    return SceneClassifier(config.modality, audio=audio, video=video, head=head)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with `requires_grad`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
