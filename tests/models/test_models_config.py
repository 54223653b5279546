"""ModelConfig: defaults, validation messages, and the YAML/JSON round trip."""

import pytest

from avsc_pipeline.config import from_dict, to_dict
from avsc_pipeline.sections.model import MODALITIES, ModelConfig
from avsc_pipeline.models.registry import check_video_names, create_audio_extractor


def test_defaults_are_the_paper_model():
    cfg = ModelConfig()
    assert (cfg.audio, cfg.video, cfg.audio_embedding) == ("fcnn", "densenet161", "attention")
    assert cfg.audio_widths == (144, 288, 576)
    assert cfg.fusion_hidden == (512, 128, 64)
    assert (cfg.audio_bn_eps, cfg.audio_bn_momentum) == (1e-3, 0.01)
    assert MODALITIES == ("audio", "video", "joint") and cfg.modality == "joint"


def test_round_trip_through_dict():
    cfg = ModelConfig(audio_widths=(24, 48, 96), video="small_cnn", fusion_hidden=(32,),
                      audio_embedding="block3", video_weights="/tmp/w.pth")
    data = to_dict(cfg)
    assert data["audio_widths"] == [24, 48, 96]  # JSON-safe lists
    assert from_dict(ModelConfig, data) == cfg
    assert from_dict(ModelConfig, {"fusion_dropout": 0}).fusion_dropout == 0.0


@pytest.mark.parametrize("kwargs, pattern", [
    ({"modality": "both"}, "expected modality in"),
    ({"audio_widths": (8, 16)}, "expected 3 values in audio_widths"),
    ({"audio_widths": (8, 0, 16)}, "audio_widths to hold positive ints"),
    ({"audio_dropout": 1.0}, r"expected audio_dropout in \[0, 1\), got 1.0"),
    ({"audio_embedding": "logits"}, "expected audio_embedding in"),
    ({"audio_bn_eps": 0.0}, "expected audio_bn_eps > 0"),
    ({"audio_bn_momentum": 0.99 + 1}, "audio_bn_momentum in"),
    ({"video_weights": ""}, "expected video_weights"),
    ({"fusion_hidden": (512, -1)}, "fusion_hidden"),
    ({"fusion_dropout": -0.1}, "fusion_dropout"),
])
def test_bad_values_are_named(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("data, pattern", [
    ({"video_weights_unsafe": "yes"}, "model.video_weights_unsafe: expected true or false, got 'yes'"),
    ({"fusion_hidden": 512}, "model.fusion_hidden: expected a list, got 512"),
    ({"audio_widths": [8, 16.5, 32]}, "model.audio_widths: expected an integer, got 16.5"),
    ({"video_weights": 3}, "model.video_weights: expected a string, got 3"),
])
def test_types_are_checked_in_one_place(data, pattern):
    with pytest.raises(ValueError, match=pattern):
        from_dict(ModelConfig, data, source="model.yaml", section="model")


@pytest.mark.parametrize("kwargs, pattern", [
    ({"video": "resnet9"}, r"densenet161.*got 'resnet9'"),
    ({"video": "timm:"}, "timm:<model_name>"),
    ({"video_weights": "timm"}, "match the backbone's library"),
    ({"video": "small_cnn", "video_weights": "torchvision"}, "match the backbone's library"),
])
def test_unknown_names_are_refused_by_the_registry(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_video_names(ModelConfig(**kwargs))


def test_unknown_audio_extractor_is_refused_by_the_registry():
    with pytest.raises(ValueError, match=r"expected model.audio in \['fcnn', 'panns_cnn14'\], got 'cnn14'"):
        create_audio_extractor(ModelConfig(audio="cnn14"), 6, 10)


def test_from_dict_names_unknown_keys_and_source():
    with pytest.raises(ValueError, match="video_wieghts"):
        from_dict(ModelConfig, {"video_wieghts": "x"})
    with pytest.raises(ValueError, match="model.yaml: expected audio_dropout"):
        from_dict(ModelConfig, {"audio_dropout": 2}, source="model.yaml")


def test_named_weights_match_their_library():
    assert ModelConfig(video_weights="torchvision").video_weights == "torchvision"
    assert ModelConfig(video="timm:resnet18", video_weights="timm").video == "timm:resnet18"
