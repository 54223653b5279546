"""Loading local pre-trained weights: the Places365 release format, plain state dicts, refusals."""

import logging
import re
from dataclasses import dataclass

import pytest
import torch
import torchvision

from avsc_pipeline.models.classifier import build_model
from avsc_pipeline.sections.model import ModelConfig
from avsc_pipeline.models.weights import load_weights_file, normalize_keys


def build(config, modality, *args, **kwargs):
    """`build_model` of `config` with its modality set (the architecture choice of `model:`)."""
    import dataclasses

    return build_model(dataclasses.replace(config, modality=modality), *args, **kwargs)


@dataclass
class Provenance:
    """A custom class: pickling it makes a file that weights_only loading refuses."""

    note: str


def _old_style(key):
    # torchvision's 'denselayer1.norm1.weight' was 'denselayer1.norm.1.weight' in 2017 releases.
    return re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)


@pytest.fixture(scope="module")
def places_densenet(tmp_path_factory):
    """A file in the Places365 release format and the torchvision state dict it came from."""
    torch.manual_seed(0)
    source = torchvision.models.densenet161().state_dict()
    state = {"module." + _old_style(k): v for k, v in source.items()
             if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")}
    state["module.classifier.weight"] = torch.randn(365, 2208)
    state["module.classifier.bias"] = torch.randn(365)
    path = tmp_path_factory.mktemp("w") / "densenet161_places365.pth.tar"
    torch.save({"epoch": 1, "arch": "densenet161", "state_dict": state, "best_prec1": 50.0}, path)
    return path, source, state


def test_places365_densenet_loads_every_tensor(places_densenet, caplog):
    path, source, state = places_densenet
    assert "module.features.denseblock1.denselayer1.norm.1.weight" in state  # really old-style
    with caplog.at_level(logging.INFO, logger="avsc_pipeline.models.weights"):
        model = build(ModelConfig(video_weights=str(path)), "video", 10)
    loaded = model.video.backbone.state_dict()
    assert set(loaded) == {k for k in source if not k.startswith("classifier.")}
    for key, value in loaded.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, source[key]), key
    assert any(f"loaded {len(state) - 2} tensors" in r.getMessage() for r in caplog.records)


def test_a_missing_tensor_is_named(places_densenet, tmp_path):
    path, _, state = places_densenet
    gone = "module.features.denseblock3.denselayer7.conv.2.weight"
    partial = {k: v for k, v in state.items() if k != gone}
    bad = tmp_path / "partial.pth"
    torch.save({"state_dict": partial}, bad)
    with pytest.raises(ValueError) as info:
        build(ModelConfig(video_weights=str(bad)), "video", 10)
    message = str(info.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message
    assert "1 backbone tensor(s) missing" in message
    assert "features.denseblock3.denselayer7.conv2.weight" in message


def test_plain_torchvision_state_dict_loads(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(source, path)
    model = build(ModelConfig(video="resnet18", video_weights=str(path)), "video", 4)
    for key, value in model.video.backbone.state_dict().items():
        assert torch.equal(value, source[key]), key


def test_shape_mismatch_is_named(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"conv1.weight: file \(64, 3, 3, 3\) != model \(64, 3, 7, 7\)"):
        build(ModelConfig(video="resnet18", video_weights=str(path)), "video", 4)


def test_custom_pickled_class_needs_the_unsafe_flag(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": state, "provenance": Provenance("trained elsewhere")}, path)
    config = ModelConfig(video="resnet18", video_weights=str(path))
    with pytest.raises(ValueError) as info:
        build(config, "video", 4)
    assert str(info.value) == (
        f"{path}: needs the full unpickler (a legacy pickle); "
        "set model.video_weights_unsafe: true if you trust this file"
    )
    unsafe = ModelConfig(video="resnet18", video_weights=str(path), video_weights_unsafe=True)
    model = build(unsafe, "video", 4)
    assert torch.equal(model.video.backbone.conv1.weight, state["conv1.weight"])


def test_missing_and_truncated_files_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'nope.pth'))}: weights file not found$"):
        load_weights_file(tmp_path / "nope.pth")
    path = tmp_path / "whole.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError) as info:
        load_weights_file(cut)
    assert str(info.value).startswith(f"{cut}: ") and "\n" not in str(info.value)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pth: "):
        load_weights_file(tmp_path / "empty.pth")
    torch.save({"a": 1}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="name -> tensor"):
        load_weights_file(tmp_path / "foreign.pth")


def test_key_normalization_only_touches_dense_layers_and_the_head():
    t = torch.zeros(1)
    state = {
        "module.features.denseblock1.denselayer12.norm.2.running_var": t,
        "module.features.denseblock1.denselayer12.relu.1.weight": t,
        "module.features.transition1.norm.weight": t,
        "module.features.transition1.conv.weight": t,
        "module.features.norm5.bias": t,
        "module.classifier.weight": t,
        "fc.norm.1.weight": t,
    }
    assert set(normalize_keys(state, ("classifier.",))) == {
        "features.denseblock1.denselayer12.norm2.running_var",
        "features.denseblock1.denselayer12.relu1.weight",
        "features.transition1.norm.weight",
        "features.transition1.conv.weight",
        "features.norm5.bias",
        "fc.norm.1.weight",
    }


def test_garbage_bytes_are_corrupt_not_a_legacy_pickle(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"zzzz")
    with pytest.raises(ValueError, match=r"garbage.pth: corrupt weights file \(not a torch.save pickle\)$"):
        load_weights_file(path)


def test_named_weights_without_internet_are_one_line(monkeypatch):
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError) as info:
        build(ModelConfig(video="resnet18", video_weights="torchvision"), "video", 4)
    message = str(info.value)
    assert "could not be downloaded" in message and "model.video_weights" in message and "\n" not in message
