"""A run's model: built for the shards, initialized from an earlier step, frozen as configured."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from avsc_pipeline.config import config_diff, to_dict
from avsc_pipeline.errors import not_found
from avsc_pipeline.models.checkpoint import load_checkpoint
from avsc_pipeline.models.classifier import SceneClassifier, build_model
from avsc_pipeline.sections.features import PANNS_SAMPLE_RATE
from avsc_pipeline.sections.model import PRETRAINED_AUDIO, ModelConfig
from avsc_pipeline.sections.train import TrainConfig

logger = logging.getLogger(__name__)


def check_feature_section(given: Optional[Dict[str, Any]], shards: Dict[str, Any], source: Path) -> None:
    """Refuse a config whose `features:` section differs from the shards' feature config.

    Args:
        given: the `features:` keys the config files give (None or empty: nothing to check).
        shards: the shards' feature config as a dict.
        source: the shard folder, named in the message.
    """
    if not given:
        return
    diff = config_diff({k: shards.get(k, "<missing>") for k in given}, given)
    if diff:
        raise ValueError(f"{source}: the shards were made with another feature config than the config's "
                         f"features: section ({'; '.join(diff)}); re-extract them with that config, or drop "
                         "the section: features come from the shards")


def build_run_model(model_config: ModelConfig, train: TrainConfig, classes: List[str], features: Dict[str, Any],
                    audio_channels: int) -> SceneClassifier:
    """The run's model: pre-trained video weights, then `init_from`, then freezing.

    Args:
        model_config: the `model:` section.
        train: the `train:` section (`init_from`, `freeze_audio`, `freeze_video`).
        classes: the shards' class list.
        features: the shards' feature config as a dict (an `init_from` checkpoint must match it).
        audio_channels: C of the shards' `(C, F, T)` audio features.

    Raises:
        ValueError: a missing or broken weights file or `init_from` checkpoint, one made for
            another class list or feature config (fields named), or a freeze that leaves
            nothing to train.
    """
    if model_config.modality == "audio" and train.freeze_audio:
        raise ValueError("expected train.freeze_audio false for model.modality 'audio' (nothing would train), "
                         "got true")
    check_audio_features(model_config, features)
    model = build_model(model_config, len(classes), audio_channels)
    if train.init_from:
        init_extractors(model, Path(train.init_from), classes, features)
    else:
        logger.info("no init_from: extractors start from their initial or pre-trained weights")
    model.set_frozen(audio=train.freeze_audio and model.uses_audio, video=train.freeze_video and model.uses_video)
    return model


def check_audio_features(model_config: ModelConfig, features: Dict[str, Any]) -> None:
    """Refuse a pre-trained audio extractor on shards it cannot read: PANNs' CNN14 reads the
    on-device log-mel of waveform shards, and its release weights were trained at 32 kHz.

    Args:
        model_config: the `model:` section.
        features: the shards' feature config as a dict.
    """
    if not model_config.uses_audio or model_config.audio not in PRETRAINED_AUDIO:
        return
    if features.get("audio") != "waveform":
        raise ValueError(f"expected waveform shards (features.audio: waveform) for model.audio "
                         f"{model_config.audio!r}, got {features.get('audio', 'logmel')!r} shards; extract them with "
                         "--config configs/features/waveform.yaml")
    rate = features.get("waveform_rate")
    if model_config.audio_weights is not None and rate != PANNS_SAMPLE_RATE:
        raise ValueError(f"expected waveform shards at {PANNS_SAMPLE_RATE} Hz for the pre-trained "
                         f"{model_config.audio!r} (model.audio_weights: its front end's rate), got {rate!r}")


def init_extractors(model: SceneClassifier, path: Path, classes: List[str], features: Dict[str, Any]) -> None:
    """Copy the extractors an earlier step's checkpoint holds into `model` (strictly)."""
    if not path.is_file():
        raise ValueError("train.init_from " + not_found(path, "checkpoint"))
    artifact = load_checkpoint(path).artifact
    if list(artifact.classes) != list(classes):
        raise ValueError(f"{path}: init_from checkpoint has classes {list(artifact.classes)}, the shards {classes}")
    # Typed: a checkpoint written before a feature field existed takes its default (the meaning
    # it had then, e.g. `audio: logmel`).
    diff = config_diff(to_dict(artifact.recipe.features), features)
    if diff:
        raise ValueError(f"{path}: init_from checkpoint was trained on another feature config ({'; '.join(diff)})")
    loaded = []
    for part in ("audio", "video"):
        module = getattr(model, part)
        prefix = f"{part}."
        source = {k[len(prefix):]: v for k, v in artifact.weights.items() if k.startswith(prefix)}
        if module is None:
            continue
        if not source:
            logger.info("init_from %s holds no %s extractor: it starts from its initial weights", path, part)
            continue
        try:
            module.load_state_dict(source, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: its {part} extractor does not fit this model "
                             f"({str(err).splitlines()[0]})") from None
        loaded.append(part)
    logger.info("init_from %s: %s extractor(s) loaded", path, ", ".join(loaded) or "no")
