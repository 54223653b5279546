"""VideoRandAugment and its batched kernels: parity with torchvision, per-image draws, eval identity."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from avsc_pipeline.dataio.video_augment import (
    OP_SPACE, VideoRandAugment, adjust_contrast_batch, adjust_sharpness_batch, magnitude_of,
)


def images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("kernel,reference", [
    (adjust_sharpness_batch, TF.adjust_sharpness),
    (adjust_contrast_batch, TF.adjust_contrast),
])
def test_batched_kernels_match_torchvision_per_image(kernel, reference):
    x = images(24, size=33, seed=1)
    factors = torch.rand(24, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2.5
    factors[:4] = torch.tensor([0.58, 1.42, 0.0, 1.0], dtype=torch.float64)
    out = kernel(x, factors)
    for i in range(24):
        expected = reference(x[i], float(factors[i]))
        assert (out[i].int() - expected.int()).abs().max() <= 1, f"image {i}, factor {float(factors[i])}"


def test_magnitudes_and_signs_are_torchvision_randaugment():
    for op in ("Identity", "Sharpness", "Contrast"):
        magnitudes_fn, signed = v2.RandAugment._AUGMENTATION_SPACE[op]
        values = magnitudes_fn(31, 224, 224)
        assert OP_SPACE[op][1] == signed
        assert magnitude_of(op, 14, 31) == (0.0 if values is None else float(values[14]))
    module = VideoRandAugment(seed=0)
    op_ids, magnitudes = module.draw(6000, torch.device("cpu"))
    factors = 1.0 + magnitudes
    counts = torch.bincount(op_ids.flatten(), minlength=3).float() / op_ids.numel()
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.02)
    magnitude = magnitude_of("Sharpness", 14, 31)
    for code in (1, 2):
        chosen = factors[op_ids == code]
        assert set(chosen.unique().tolist()) == {1.0 - magnitude, 1.0 + magnitude}
        assert abs(float((chosen < 1).double().mean()) - 0.5) < 0.03
    assert (factors[op_ids == 0] == 1.0).all()


@pytest.mark.parametrize("kernels", ["batched", "per_image"])
def test_randaugment_equals_torchvision_functions_with_the_drawn_ops(kernels):
    module = VideoRandAugment(kernels=kernels, seed=3)
    video = images(12, size=36, seed=4).view(6, 2, 3, 36, 36)
    op_ids, magnitudes = VideoRandAugment(seed=3).draw(12, torch.device("cpu"))
    factors = 1.0 + magnitudes
    out = module(video).view(12, 3, 36, 36)
    kernels = {"Sharpness": TF.adjust_sharpness, "Contrast": TF.adjust_contrast}
    for i, image in enumerate(video.view(12, 3, 36, 36)):
        for code, factor in zip(op_ids[i].tolist(), factors[i].tolist()):
            op = module.ops[code]
            image = kernels[op](image, factor) if op in kernels else image
        assert (out[i].int() - image.int()).abs().max() <= 1


def test_randaugment_draws_per_image_and_is_identity_in_eval():
    module = VideoRandAugment(seed=0)
    same = images(1, seed=5).expand(16, 3, 40, 40).contiguous().view(8, 2, 3, 40, 40)
    out = module(same).view(16, -1)
    assert len({tuple(row.tolist()) for row in out}) > 4
    module.eval()
    assert module(same) is same


def test_randaugment_checks_inputs_and_prints_its_settings():
    module = VideoRandAugment(seed=0)
    with pytest.raises(TypeError, match="expected uint8 frames, got torch.float32"):
        module(torch.zeros(2, 2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected frames of shape .* got \(2, 4, 8, 8\)"):
        module(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected a non-empty subset"):
        VideoRandAugment(ops=("Mirror",))
    text = repr(module)
    assert "Sharpness" in text and "num_ops=2" in text and "magnitude=14/30" in text


def test_the_masked_path_needs_no_host_synchronization_and_gives_the_same_frames(monkeypatch):
    """On CUDA every `torch.tensor(..., device=)` and `nonzero` drains the GPU queue; the masked
    path (the default there) uses neither after the first batch, and equals the indexed path."""
    from avsc_pipeline.dataio.video_augment import VideoRandAugment

    video = torch.randint(0, 256, (8, 2, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    indexed = VideoRandAugment(seed=3, kernels="batched").train()
    masked = VideoRandAugment(seed=3, kernels="batched").train()
    masked.masked = True
    masked(video)  # the first batch builds the per-device constants
    indexed(video)
    calls = {"tensor": 0, "nonzero": 0}
    real_tensor, real_nonzero = torch.tensor, torch.Tensor.nonzero

    def counting_tensor(*args, **kwargs):
        calls["tensor"] += 1
        return real_tensor(*args, **kwargs)

    def counting_nonzero(self, *args, **kwargs):
        calls["nonzero"] += 1
        return real_nonzero(self, *args, **kwargs)

    monkeypatch.setattr(torch, "tensor", counting_tensor)
    monkeypatch.setattr(torch.Tensor, "nonzero", counting_nonzero)
    out_masked = masked(video)
    assert calls == {"tensor": 0, "nonzero": 0}, calls
    monkeypatch.undo()
    assert torch.equal(out_masked, indexed(video))
