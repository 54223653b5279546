"""The `model:` section of a recipe: which audio extractor, video backbone and fusion head.

Importing this module is cheap and imports no model: names are resolved by
:mod:`.registry` when a model is built (as timm's `create_model` does), and a name it does not
know is refused there, before a run writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

#: What a model classifies from: audio alone, video alone, or both fused ("joint").
MODALITIES: Tuple[str, ...] = ("audio", "video", "joint")

#: What the joint model uses as the audio embedding E_A (see :class:`ModelConfig`).
AUDIO_EMBEDDINGS: Tuple[str, ...] = ("attention", "block3")

#: `video_weights` values that mean "the library's own named pretrained weights" (downloads).
NAMED_WEIGHTS: Tuple[str, ...] = ("torchvision", "timm")

#: Audio extractors pre-trained elsewhere (`audio_weights`), each reading waveform shards
#: (`features.audio: waveform`) through the on-device log-mel front end; the others (the FCNN)
#: start from `train.init_from` or from scratch.
PRETRAINED_AUDIO: Tuple[str, ...] = ("panns_cnn14",)

#: The FCNN's own fields, which a pre-trained audio extractor never reads.
FCNN_FIELDS: Tuple[str, ...] = ("audio_widths", "audio_dropout", "audio_embedding", "audio_bn_eps",
                                "audio_bn_momentum")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the audio, video and joint scene classifiers (Hu et al., DCASE 2021 1b).

    Attributes:
        modality: what the model classifies from: `audio` (the FCNN alone), `video` (video
            backbone and MLP head) or `joint` (both extractors and the MLP head over [E_A, E_V]).
        audio: audio extractor, a name in `registry.AUDIO_EXTRACTORS`: "fcnn" (Hu et al.'s, on
            the stored log-mel features) or "panns_cnn14" (PANNs' CNN14 on each channel of the
            on-device log-mel of waveform shards; E_A is the mean of the channels' 2048-d `fc1`
            embeddings).
        audio_widths: channels of the FCNN's three conv blocks; the paper's (24, 48, 96) filters
            times 6 input channels = (144, 288, 576).
        audio_dropout: dropout after each of the first three convs of block 3.
        audio_embedding: E_A, the audio embedding that the joint model concatenates with E_V.
            "attention" (default) is the FCNN's attended, globally pooled class-sized output,
            i.e. the stage-1 audio model's own logits: that is what the stage-1 audio model
            outputs and what the paper concatenates with the video embedding. "block3" is the
            globally average-pooled block-3 map (`audio_widths[2]` channels), a wider embedding
            that does not pass through the 1x1 class head.
        audio_bn_eps: epsilon of every FCNN BatchNorm (Keras default 1e-3).
        audio_bn_momentum: torch-convention BatchNorm momentum (0.01 = Keras momentum 0.99).
        audio_weights: a local weights file of a pre-trained audio extractor (`PRETRAINED_AUDIO`,
            e.g. PANNs' `Cnn14_mAP=0.431.pth`), loaded exactly; None for random initialization
            (a warning is logged). Nothing is downloaded. Refused for the FCNN.
        audio_weights_unsafe: allow the full unpickler for a trusted legacy audio weights file.
        video: video backbone, a name in `VIDEO_BACKBONES` or "timm:<model_name>".
        video_weights: a local weights file (e.g. Places365 `densenet161_places365.pth.tar`),
            "torchvision" / "timm" for the library's named pretrained weights (downloads), or
            None for random initialization (a warning is logged).
        video_weights_unsafe: allow the full unpickler for a trusted legacy weights file.
        fusion_hidden: hidden widths of the MLP head (video and joint stages).
        fusion_dropout: dropout after each hidden layer of the MLP head.
    """

    modality: str = "joint"
    audio: str = "fcnn"
    audio_widths: Tuple[int, int, int] = (144, 288, 576)
    audio_dropout: float = 0.3
    audio_embedding: str = "attention"
    audio_bn_eps: float = 1e-3
    audio_bn_momentum: float = 0.01
    audio_weights: Optional[str] = None
    audio_weights_unsafe: bool = False
    video: str = "densenet161"
    video_weights: Optional[str] = None
    video_weights_unsafe: bool = False
    fusion_hidden: Tuple[int, ...] = (512, 128, 64)
    fusion_dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"expected modality in {MODALITIES}, got {self.modality!r}")
        self._check_audio()
        self._check_video()
        _check_widths("fusion_hidden", self.fusion_hidden, length=None)
        _check_probability("fusion_dropout", self.fusion_dropout)

    def _check_audio(self) -> None:
        _check_widths("audio_widths", self.audio_widths, length=3)
        _check_probability("audio_dropout", self.audio_dropout)
        if self.audio_embedding not in AUDIO_EMBEDDINGS:
            raise ValueError(
                f"expected audio_embedding in {AUDIO_EMBEDDINGS}, got {self.audio_embedding!r}"
            )
        if not _is_number(self.audio_bn_eps) or self.audio_bn_eps <= 0:
            raise ValueError(f"expected audio_bn_eps > 0, got {self.audio_bn_eps!r}")
        if not _is_number(self.audio_bn_momentum) or not 0 < self.audio_bn_momentum <= 1:
            raise ValueError(
                f"expected audio_bn_momentum in (0, 1] (torch convention), "
                f"got {self.audio_bn_momentum!r}"
            )
        weights = self.audio_weights
        if weights is not None and (not isinstance(weights, str) or not weights):
            raise ValueError(f"expected audio_weights to be a path or None, got {weights!r}")
        if weights is not None and self.audio not in PRETRAINED_AUDIO:
            raise ValueError(f"expected audio_weights null for audio {self.audio!r} (only {list(PRETRAINED_AUDIO)} "
                             f"load pre-trained weights; the FCNN starts from train.init_from), got {weights!r}")

    def _check_video(self) -> None:
        weights = self.video_weights
        if weights is not None and (not isinstance(weights, str) or not weights):
            raise ValueError(
                f"expected video_weights to be a path, a library name or None, got {weights!r}"
            )

    @property
    def uses_audio(self) -> bool:
        """Whether the model reads audio features."""
        return self.modality in ("audio", "joint")

    @property
    def uses_video(self) -> bool:
        """Whether the model reads video frames."""
        return self.modality in ("video", "joint")

    def unused_fields(self) -> Tuple[str, ...]:
        """The fields this modality's model never reads: the video backbone's and the fusion
        head's for an audio model, the audio extractor's for a video model; and of the audio
        fields, the weights file's for the FCNN and the FCNN's for a pre-trained extractor."""
        weights = ("audio_weights", "audio_weights_unsafe")
        audio = ("audio",) + FCNN_FIELDS + weights
        video = ("video", "video_weights", "video_weights_unsafe")
        head = ("fusion_hidden", "fusion_dropout")
        other_audio = FCNN_FIELDS if self.audio in PRETRAINED_AUDIO else weights
        if self.modality == "audio":
            return video + head + other_audio
        if self.modality == "video":
            return audio
        return other_audio


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_probability(name: str, value: object) -> None:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"expected {name} in [0, 1), got {value!r}")


def _check_widths(name: str, widths: object, length: Optional[int]) -> None:
    if not isinstance(widths, tuple):
        raise ValueError(f"expected {name} to be a tuple of ints, got {widths!r}")
    if length is not None and len(widths) != length:
        raise ValueError(f"expected {length} values in {name}, got {len(widths)}: {widths!r}")
    for width in widths:
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"expected {name} to hold positive ints, got {widths!r}")
