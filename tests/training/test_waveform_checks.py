"""What a run checks about waveform shards and pre-trained audio extractors, before anything is
written: CNN14 needs waveform shards (at 32 kHz for PANNs' weights), waveform shards take no
log-mel statistics, and an `init_from` checkpoint written before `features.audio` existed still
fits the log-mel shards it was trained on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avsc_pipeline.config import to_dict
from avsc_pipeline.dataio.training_input import build_training_input
from avsc_pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.sections.loading import LoaderConfig
from avsc_pipeline.sections.model import ModelConfig
from avsc_pipeline.sections.train import TrainConfig
from avsc_pipeline.testing import SMALL_FEATURES, write_random_folder, write_test_checkpoint
from avsc_pipeline.training.initialize import build_run_model, check_audio_features

CLASSES = ["a", "b"]
CNN14 = ModelConfig(audio="panns_cnn14", video="small_cnn", fusion_hidden=(8,))


def test_cnn14_needs_waveform_shards_at_the_releases_rate():
    with pytest.raises(ValueError, match=r"expected waveform shards \(features.audio: waveform\) for model.audio "
                                         r"'panns_cnn14', got 'logmel' shards"):
        check_audio_features(CNN14, to_dict(FeatureConfig()))
    check_audio_features(CNN14, to_dict(FeatureConfig(audio="waveform", waveform_rate=48000)))  # random weights
    weighted = dataclasses.replace(CNN14, audio_weights="Cnn14_mAP=0.431.pth")
    with pytest.raises(ValueError, match="expected waveform shards at 32000 Hz .* got 48000"):
        check_audio_features(weighted, to_dict(FeatureConfig(audio="waveform", waveform_rate=48000)))
    check_audio_features(ModelConfig(), to_dict(FeatureConfig(audio="waveform")))  # the FCNN reads either
    with pytest.raises(ValueError, match="got 'logmel' shards"):
        build_run_model(CNN14, TrainConfig(), CLASSES, to_dict(FeatureConfig()), 6)


def test_waveform_shards_take_no_log_mel_statistics(tmp_path):
    waveform = dataclasses.replace(SMALL_FEATURES, audio="waveform")
    write_random_folder(tmp_path / "train", (20,), waveform, classes=CLASSES)
    loader = LoaderConfig(num_workers=0, audio_normalize="standardize")
    with pytest.raises(ValueError, match="expected loader.audio_normalize none for waveform shards"):
        build_training_input(tmp_path, loader, None, "cpu", frame_norm=((0.5,) * 3, (0.5,) * 3))
    inputs = build_training_input(tmp_path, LoaderConfig(num_workers=0), None, "cpu",
                                  frame_norm=((0.5,) * 3, (0.5,) * 3))
    try:
        assert inputs.preparer.front_end is not None and inputs.preparer.front_end.sample_rate == 32000
    finally:
        inputs.close()


def test_an_init_from_checkpoint_written_before_the_waveform_keys_still_fits(tmp_path):
    folder = write_random_folder(tmp_path / "train", (20,), SMALL_FEATURES, classes=CLASSES)
    path = write_test_checkpoint(tmp_path / "audio" / "best.pt", folder, modality="audio")
    artifact = load_checkpoint(path).artifact
    artifact.config["features"] = {k: v for k, v in artifact.config["features"].items()
                                   if k not in ("audio", "waveform_rate")}  # as written before schema 3
    save_checkpoint(path, artifact)
    model = build_run_model(ModelConfig(audio_widths=(8, 8, 8), video="small_cnn", fusion_hidden=(16,)),
                            TrainConfig(init_from=str(path)), CLASSES, to_dict(SMALL_FEATURES), 6)
    assert torch.equal(model.audio.input_bn.running_mean, artifact.weights["audio.input_bn.running_mean"])
