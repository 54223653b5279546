"""CLIP video through timm (`model.video: timm:vit_base_patch16_clip_224.openai`): the image
embedding (CLIP's 512-d projection) summed over frames, CLIP's own frame normalization read from
the model, and exact loading of a local weights file (`.pth` or `.safetensors`)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

from avsc_pipeline.models.classifier import build_model  # noqa: E402
from avsc_pipeline.models.registry import create_video_extractor  # noqa: E402
from avsc_pipeline.models.video import is_clip_tower  # noqa: E402
from avsc_pipeline.sections.model import ModelConfig  # noqa: E402

CLIP = "timm:vit_base_patch16_clip_224.openai"
#: OpenAI CLIP's image normalization (its `_transform`'s Normalize), written out.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def clip_state():
    """A state dict with timm's key names for the CLIP tower, random values (a fixed seed)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_clip_224.openai", pretrained=False).state_dict()


def test_clip_towers_are_told_from_classifiers():
    assert is_clip_tower("vit_base_patch16_clip_224.openai") and is_clip_tower("vit_base_patch16_clip_224.laion2b")
    assert not is_clip_tower("vit_base_patch16_clip_224.openai_ft_in1k")  # ImageNet classes, not the projection
    assert not is_clip_tower("resnest50d") and not is_clip_tower("vit_base_patch16_224")


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_local_clip_file_loads_exactly_with_clips_normalization(clip_state, tmp_path, suffix):
    path = tmp_path / f"vit_base_patch16_clip_224.openai{suffix}"
    if suffix == ".pth":
        torch.save(clip_state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in clip_state.items()}, str(path))
    extractor = create_video_extractor(ModelConfig(video=CLIP, video_weights=str(path)))
    own = extractor.backbone.state_dict()
    assert own.keys() == clip_state.keys() and "head.weight" in own  # the projection is kept
    for name, tensor in own.items():
        assert torch.equal(tensor, clip_state[name]), name
    assert extractor.embed_dim == 512 and tuple(own["head.weight"].shape) == (512, 768)
    assert extractor.frame_mean == pytest.approx(CLIP_MEAN) and extractor.frame_std == pytest.approx(CLIP_STD)


def openai_layout(state):
    """timm's CLIP tower state dict in the layout of OpenAI's `model.py` (and OpenCLIP's
    `open_clip_pytorch_model.bin`): the image tower under `visual.`, beside text-tower tensors."""
    out = {"visual.conv1.weight": state["patch_embed.proj.weight"],
           "visual.class_embedding": state["cls_token"][0, 0],
           "visual.positional_embedding": state["pos_embed"][0],
           "visual.ln_pre.weight": state["norm_pre.weight"], "visual.ln_pre.bias": state["norm_pre.bias"],
           "visual.ln_post.weight": state["norm.weight"], "visual.ln_post.bias": state["norm.bias"],
           "visual.proj": state["head.weight"].T.contiguous(),
           "token_embedding.weight": torch.zeros(49408, 512), "logit_scale": torch.tensor(4.6)}
    names = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv.weight": "attn.in_proj_weight",
             "attn.qkv.bias": "attn.in_proj_bias", "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj"}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            for timm_name, openai_name in names.items():
                if rest.startswith(timm_name):
                    rest = openai_name + rest[len(timm_name):]
                    break
            out[f"visual.transformer.resblocks.{index}.{rest}"] = value
    return out


def test_openais_layout_loads_through_timms_conversion(clip_state, tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(openai_layout(clip_state), path)
    extractor = create_video_extractor(ModelConfig(video=CLIP, video_weights=str(path)))
    own = extractor.backbone.state_dict()
    for name, tensor in own.items():
        expected = torch.zeros(512) if name == "head.bias" else clip_state[name]  # OpenAI's projection has no bias
        assert torch.equal(tensor, expected), name
    broken = openai_layout(clip_state)
    del broken["visual.transformer.resblocks.5.ln_2.weight"]
    torch.save(broken, path)
    with pytest.raises(ValueError, match=r"missing from the file: blocks\.5\.norm2\.weight"):
        create_video_extractor(ModelConfig(video=CLIP, video_weights=str(path)))


def test_a_clip_file_missing_a_tensor_is_refused_naming_it(clip_state, tmp_path):
    state = dict(clip_state)
    del state["blocks.3.attn.qkv.weight"], state["head.weight"]
    path = tmp_path / "clip.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"clip\.pth: does not fit the video backbone; 2 backbone tensor\(s\) "
                                         r"missing from the file: blocks\.3\.attn\.qkv\.weight, head\.weight"):
        create_video_extractor(ModelConfig(video=CLIP, video_weights=str(path)))


@pytest.mark.slow
def test_e_v_is_the_clip_image_embedding_summed_over_the_frames(clip_state, tmp_path):
    path = tmp_path / "clip.pth"
    torch.save(clip_state, path)
    model = build_model(ModelConfig(modality="video", video=CLIP, video_weights=str(path), fusion_hidden=(8,)), 3)
    assert (model.frame_mean, model.frame_std) == (pytest.approx(CLIP_MEAN), pytest.approx(CLIP_STD))
    model.eval()
    frames = torch.randn(2, 2, 3, 224, 224)
    with torch.no_grad():
        e_v = model.embed_video(frames)
        tower = model.video.backbone
        # CLIP's image embedding: the class token after ln_post, times the projection
        tokens = tower.forward_features(frames.flatten(0, 1))
        expected = (tokens[:, 0] @ clip_state["head.weight"].T + clip_state["head.bias"]).view(2, 2, 512).sum(dim=1)
    assert e_v.shape == (2, 512)
    torch.testing.assert_close(e_v, expected, rtol=1e-4, atol=1e-4)
