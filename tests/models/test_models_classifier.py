"""SceneClassifier: modalities, fusion head, embed/classify split, freezing."""

import logging

import pytest
import torch
from torch import nn

from avsc_pipeline.models.classifier import SceneClassifier, build_model, count_parameters
from avsc_pipeline.sections.model import ModelConfig
from avsc_pipeline.models.fusion import MLPHead
from avsc_pipeline.models.video import IMAGENET_MEAN, IMAGENET_STD

SMALL = ModelConfig(audio_widths=(8, 16, 32), video="small_cnn", fusion_hidden=(512, 128, 64))


def build(config, modality, *args, **kwargs):
    """`build_model` of `config` with its modality set (the architecture choice of `model:`)."""
    import dataclasses

    return build_model(dataclasses.replace(config, modality=modality), *args, **kwargs)


def _batch(b=3, size=32):
    torch.manual_seed(0)
    return torch.randn(b, 6, 128, 39), torch.randn(b, 2, 3, size, size)


def test_mlp_head_has_a_relu_between_every_linear():
    head = MLPHead(74, (512, 128, 64), 10, dropout=0.2)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "ReLU", "Dropout"] * 3 + ["Linear"]
    linears = [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)]
    assert linears == [(74, 512), (512, 128), (128, 64), (64, 10)]
    assert all(m.p == 0.2 for m in head if isinstance(m, nn.Dropout))
    assert [type(m).__name__ for m in MLPHead(5, (), 3)] == ["Linear"]


def test_joint_model_concatenates_audio_and_video_embeddings():
    model = build(SMALL, "joint", 10).eval()
    assert model.head[0].in_features == 10 + 64  # E_A = FCNN logits, E_V = small_cnn
    audio, video = _batch()
    with torch.no_grad():
        logits = model(audio, video)
        e_a, e_v = model.embed_audio(audio), model.embed_video(video)
        assert e_a.shape == (3, 10) and e_v.shape == (3, 64) and logits.shape == (3, 10)
        torch.testing.assert_close(e_a, model.audio(audio))
        torch.testing.assert_close(model.classify(e_a, e_v), logits)
        torch.testing.assert_close(model.head(torch.cat([e_a, e_v], 1)), logits)


def test_block3_embedding_widens_the_head():
    config = ModelConfig(audio_widths=(8, 16, 32), video="small_cnn", audio_embedding="block3")
    model = build(config, "joint", 10).eval()
    assert model.head[0].in_features == 32 + 64
    audio, video = _batch()
    with torch.no_grad():
        assert model.embed_audio(audio).shape == (3, 32)
        assert model(audio, video).shape == (3, 10)


def test_single_modality_models():
    audio, video = _batch()
    audio_model = build(SMALL, "audio", 10).eval()
    assert audio_model.video is None and audio_model.head is None
    with torch.no_grad():
        torch.testing.assert_close(audio_model(audio), audio_model.audio(audio))
        torch.testing.assert_close(audio_model(audio, None), audio_model.classify(audio_model.embed_audio(audio), None))
    assert (audio_model.frame_mean, audio_model.frame_std) == (IMAGENET_MEAN, IMAGENET_STD)
    video_model = build(SMALL, "video", 7).eval()
    assert video_model.audio is None and video_model.head[0].in_features == 64
    with torch.no_grad():
        assert video_model(None, video).shape == (3, 7)
    with pytest.raises(ValueError, match="expected video frames for modality 'video', got None"):
        video_model(audio, None)
    joint = build(SMALL, "joint", 10)
    with pytest.raises(ValueError, match="expected audio features for modality 'joint', got None"):
        joint(None, video)
    with pytest.raises(ValueError, match="expected modality in"):
        build(SMALL, "both", 10)
    with pytest.raises(ValueError, match="expected num_classes to be a positive int"):
        build(SMALL, "audio", 0)


def test_random_video_init_is_warned(caplog):
    with caplog.at_level(logging.WARNING):
        build(SMALL, "video", 3)
    assert "video backbone small_cnn: no pre-trained weights (random initialization)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build(SMALL, "audio", 3)
        build(SMALL, "video", 3, load_weights=False)
    assert "pre-trained" not in caplog.text


def test_count_parameters():
    model = build(SMALL, "joint", 10)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    model.set_frozen(audio=True)
    assert count_parameters(model, trainable_only=True) == (
        count_parameters(model) - sum(p.numel() for p in model.audio.parameters())
    )


@pytest.mark.parametrize("frozen", ["audio", "video"])
def test_frozen_extractor_does_not_change_at_all(frozen):
    torch.manual_seed(0)
    config = ModelConfig(audio_widths=(8, 16, 32), video="small_cnn", fusion_hidden=(16,))
    model = build(config, "joint", 4)
    model.set_frozen(**{frozen: True})
    other = "video" if frozen == "audio" else "audio"
    assert getattr(model, f"frozen_{frozen}") and not getattr(model, f"frozen_{other}")
    model.train()
    assert not getattr(model, frozen).training and getattr(model, other).training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    labels = torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        audio, video = torch.randn(4, 6, 128, 39), torch.randn(4, 2, 3, 32, 32)
        loss = nn.functional.cross_entropy(model(audio, video), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    for key in before:
        if key.startswith(frozen + "."):
            assert torch.equal(before[key], after[key]), key  # incl. BN running stats
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith(other + ".") and "running_mean" in k for k in changed)
    assert any(k.startswith(other + ".") and k.endswith("weight") for k in changed)
    assert any(k.startswith("head.") for k in changed)
    model.set_frozen()
    assert model.training and getattr(model, frozen).training
    assert all(p.requires_grad for p in model.parameters())


def test_cannot_freeze_a_missing_extractor():
    with pytest.raises(ValueError, match="expected a model with video to freeze it"):
        build(SMALL, "audio", 3).set_frozen(video=True)
    with pytest.raises(ValueError, match="expected"):
        SceneClassifier("joint")
