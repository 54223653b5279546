"""Model builders by name, as timm's `create_model`: a config names a model, this builds it.

`sections/model.py` imports nothing from here; a name this module does not know is refused when
the model is built, naming the known ones.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict

from torch import nn

from avsc_pipeline.sections.model import NAMED_WEIGHTS, ModelConfig
from .cnn14 import Cnn14Audio, load_cnn14_weights
from .fcnn import FCNN
from .video import VIDEO_BACKBONES, VideoExtractor, build_backbone, named_weights_library
from .weights import load_backbone_weights

logger = logging.getLogger(__name__)


def build_fcnn(config: ModelConfig, in_channels: int, num_classes: int, load_weights: bool = True) -> nn.Module:
    """Hu et al.'s FCNN as the `model:` section configures it (no pre-trained weights: an
    earlier step's checkpoint initializes it, `train.init_from`)."""
    return FCNN(in_channels=in_channels, num_classes=num_classes, widths=config.audio_widths,
                dropout=config.audio_dropout, embedding=config.audio_embedding, bn_eps=config.audio_bn_eps,
                bn_momentum=config.audio_bn_momentum)


def build_panns_cnn14(config: ModelConfig, in_channels: int, num_classes: int,
                      load_weights: bool = True) -> nn.Module:
    """PANNs' CNN14 on each of the `in_channels` audio channels, with `config.audio_weights`
    (PANNs' `Cnn14_mAP=0.431.pth`) loaded exactly when `load_weights`."""
    extractor = Cnn14Audio(num_classes)
    if load_weights and config.audio_weights is not None:
        load_cnn14_weights(extractor.backbone, config.audio_weights, allow_unsafe=config.audio_weights_unsafe)
    elif load_weights:
        logger.warning("audio extractor %s: no pre-trained weights (random initialization)", config.audio)
    return extractor


#: Audio extractors by name: `builder(config, in_channels, num_classes, load_weights)` returns a
#: module with `embed(x)`, `embed_dim` and `forward(x)` (class logits); `load_weights=False`
#: leaves pre-trained weights unread (a checkpoint that holds all weights follows).
AUDIO_EXTRACTORS: Dict[str, Callable[..., nn.Module]] = {"fcnn": build_fcnn, "panns_cnn14": build_panns_cnn14}


def create_audio_extractor(config: ModelConfig, in_channels: int, num_classes: int,
                           load_weights: bool = True) -> nn.Module:
    """The configured audio extractor (refusing an unknown name)."""
    if config.audio not in AUDIO_EXTRACTORS:
        raise ValueError(f"expected model.audio in {sorted(AUDIO_EXTRACTORS)}, got {config.audio!r}")
    return AUDIO_EXTRACTORS[config.audio](config, in_channels, num_classes, load_weights=load_weights)


def check_video_names(config: ModelConfig) -> None:
    """Refuse an unknown backbone, or named weights of another library than the backbone's."""
    try:
        library = named_weights_library(config.video)
    except ValueError as err:
        raise ValueError(f"model.video: {err}") from None
    weights = config.video_weights
    if weights in NAMED_WEIGHTS and library != weights:
        raise ValueError(f"expected model.video_weights {weights!r} to match the backbone's library "
                         f"({library!r} for {config.video!r}), got {weights!r}")


def create_video_extractor(config: ModelConfig, load_weights: bool = True) -> VideoExtractor:
    """The configured video backbone, with its weights per `config.video_weights`.

    Args:
        config: the `model:` section.
        load_weights: False builds a randomly initialized backbone whatever the config says
            (e.g. before loading a checkpoint that holds all weights).
    """
    check_video_names(config)
    source = config.video_weights if load_weights else None
    named = source in NAMED_WEIGHTS
    try:
        backbone, spec = build_backbone(config.video, pretrained=named)
    except (OSError, RuntimeError) as err:
        # urllib's URLError is an OSError; the hub wraps some failures in RuntimeError.
        if not named:
            raise
        raise ValueError(
            f"model.video_weights={source}: the named weights of {config.video!r} could not be downloaded "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); put a local weights file on this "
            f"machine and point model.video_weights at it (e.g. --set model.video_weights=data/weights/"
            f"{config.video}.pth)") from None
    if named:
        logger.info("video backbone %s: %s named pretrained weights", config.video, source)
    elif source is not None:
        load_backbone_weights(backbone, spec, source, allow_unsafe=config.video_weights_unsafe)
    elif load_weights:
        logger.warning("video backbone %s: no pre-trained weights (random initialization)", config.video)
    return VideoExtractor(backbone, spec, name=config.video)


__all__ = ["AUDIO_EXTRACTORS", "VIDEO_BACKBONES", "create_audio_extractor", "create_video_extractor",
           "check_video_names"]
