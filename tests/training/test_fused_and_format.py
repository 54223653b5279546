"""Fused optimizers on CUDA (the CPU keeps torch's default), and the video extractor's memory
format decided once per `.to()`, not by a loop over its parameters per forward."""

from __future__ import annotations

import pytest
import torch

from avsc_pipeline.models import video as video_module
from avsc_pipeline.models.video import VideoExtractor, build_backbone
from avsc_pipeline.sections.train import TrainConfig
from avsc_pipeline.training.optim import build_optimizer


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_the_optimizer_is_fused_on_cuda_only(name):
    params = [torch.nn.Parameter(torch.randn(4))]
    config = TrainConfig(optimizer=name)
    assert build_optimizer(params, config, "cuda").param_groups[0]["fused"] is True  # built, not stepped
    cpu = build_optimizer(params, config)  # the parameters' device
    assert not cpu.param_groups[0]["fused"]
    params[0].grad = torch.ones(4)
    cpu.step()


def test_the_frames_layout_is_decided_once_per_conversion(monkeypatch):
    backbone, spec = build_backbone("small_cnn")
    extractor = VideoExtractor(backbone, spec, "small_cnn")
    assert extractor.channels_last is False
    extractor.to(memory_format=torch.channels_last)
    assert extractor.channels_last is True
    calls = []
    monkeypatch.setattr(video_module, "is_channels_last", lambda module: calls.append(module) or True)
    out = extractor(torch.randn(2, 2, 3, 32, 32))
    assert out.shape == (2, spec.embed_dim) and calls == []  # no per-forward parameter loop
    extractor.to(memory_format=torch.contiguous_format)
    assert len(calls) == 1  # the conversion decided it again
