"""Video backbones and the two-frame extractor, checked against torchvision."""

import sys

import pytest
import torch
import torchvision

from avsc_pipeline.models.video import (
    IMAGENET_MEAN, IMAGENET_STD, VIDEO_BACKBONES, VideoExtractor, build_backbone,
)

EXPECTED_DIMS = {"densenet161": 2208, "vgg19": 512, "resnet50": 2048, "resnet18": 512,
                 "mobilenet_v3_small": 576, "small_cnn": 64}


def _extractor(name):
    torch.manual_seed(0)
    backbone, spec = build_backbone(name)
    return VideoExtractor(backbone, spec, name).eval()


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_frames_share_weights_and_are_summed(name):
    extractor = _extractor(name)
    video = torch.randn(3, 2, 3, 64, 64)
    with torch.no_grad():
        together = extractor(video)
        apart = extractor.backbone(video[:, 0]) + extractor.backbone(video[:, 1])
    assert together.shape == (3, extractor.embed_dim)
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)


def test_registry_dims_and_frame_statistics():
    assert set(VIDEO_BACKBONES) == set(EXPECTED_DIMS)
    frame = torch.randn(1, 3, 64, 64)
    for name, dim in EXPECTED_DIMS.items():
        backbone, spec = build_backbone(name)
        assert spec.embed_dim == dim, name
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD), name
        if name != "densenet161":  # its forward is checked below
            with torch.no_grad():
                assert backbone.eval()(frame).shape == (1, dim), name


def test_densenet161_is_torchvision_features_relu_pool():
    torch.manual_seed(0)
    reference = torchvision.models.densenet161(num_classes=10).eval()
    extractor = _extractor("densenet161")
    own = sum(p.numel() for p in extractor.parameters())
    head = sum(p.numel() for p in reference.classifier.parameters())
    assert own == sum(p.numel() for p in reference.parameters()) - head == 26_472_000
    extractor.backbone.load_state_dict(
        {k: v for k, v in reference.state_dict().items() if not k.startswith("classifier.")}
    )
    frames = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        maps = reference.features(frames[0])
        expected = torch.relu(maps).mean(dim=(2, 3)).sum(dim=0, keepdim=True)
        torch.testing.assert_close(extractor(frames), expected, rtol=1e-4, atol=1e-4)


def test_channels_last_backbone_gets_channels_last_input():
    extractor = _extractor("small_cnn")
    video = torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        plain = extractor(video)
        extractor.to(memory_format=torch.channels_last)
        seen = []
        extractor.backbone.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
        torch.testing.assert_close(extractor(video), plain, rtol=1e-4, atol=1e-5)
    assert seen == [True]


def test_bad_names_and_inputs():
    with pytest.raises(ValueError, match=r"\['densenet161', .*got 'alexnet'"):
        build_backbone("alexnet")
    with pytest.raises(ValueError, match="small_cnn"):
        build_backbone("small_cnn", pretrained=True)
    extractor = _extractor("small_cnn")
    with pytest.raises(ValueError, match=r"expected video of shape \(B, K, 3, H, W\), got \(2, 3, 32, 32\)"):
        extractor(torch.randn(2, 3, 32, 32))
    with pytest.raises(TypeError, match="uint8"):
        extractor(torch.zeros(1, 2, 3, 32, 32, dtype=torch.uint8))


def test_timm_backbone_without_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` fails as where it is not installed
    with pytest.raises(ValueError, match=r"pip install avsc-pipeline\[timm\]"):
        build_backbone("timm:resnet18")
