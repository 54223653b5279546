"""Batch augmentation modules: parity with torchvision, per-sample randomness, eval identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from avsc_pipeline.config import dump_yaml
from avsc_pipeline.recipe import load_section
from avsc_pipeline.dataio.batch_augment import (
    ChannelSwap, JointMixup, SpecAugment, one_hot,
)
from avsc_pipeline.dataio.video_augment import (
    OP_SPACE, VideoRandAugment, adjust_contrast_batch, adjust_sharpness_batch, magnitude_of,
)
from avsc_pipeline.dataio.config import BatchAugmentConfig, LoaderConfig
from avsc_pipeline.dataio.rng import beta_sample


def images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def audio(batch: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 6, 128, 39, generator=torch.Generator().manual_seed(seed))


# -- video: parity with torchvision ------------------------------------------------------------

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
    op_ids, factors = module.draw(6000, torch.device("cpu"))
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
    op_ids, factors = VideoRandAugment(seed=3).draw(12, torch.device("cpu"))
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
        VideoRandAugment(ops=("Rotate",))
    text = repr(module)
    assert "Sharpness" in text and "num_ops=2" in text and "magnitude=14/30" in text


# -- SpecAugment --------------------------------------------------------------------------------

def masked_extent(out: torch.Tensor, fill: float = 0.0):
    """Per sample: masked frequency rows and time columns (whole rows/columns equal to fill)."""
    hit = (out == fill).all(dim=1)  # (B, F, T), all channels
    return hit.all(dim=2).sum(dim=1), hit.all(dim=1).sum(dim=1), hit


def test_spec_augment_masks_are_at_most_a_tenth_and_cover_all_channels():
    module = SpecAugment(fill="zero", seed=0)
    x = torch.ones(400, 6, 128, 39)
    out = module(x)
    rows, cols, hit = masked_extent(out)
    assert rows.max() <= 12 and cols.max() <= 3
    assert rows.max() == 12 and cols.max() == 3  # the full range is reachable
    assert torch.equal((out == 0).any(dim=1), hit)  # a masked cell is masked in every channel
    assert torch.equal(hit, (out[:, :1] == 0).squeeze(1))


def test_spec_augment_fills_with_the_sample_mean_and_draws_per_sample():
    module = SpecAugment(fill="mean", seed=1)
    x = audio(1).expand(32, -1, -1, -1).contiguous()
    out = module(x)
    changed = out != x
    assert len({tuple(torch.nonzero(c[0]).flatten().tolist()) for c in changed}) > 20
    means = x.mean(dim=(2, 3))
    for b in range(32):
        for c in range(6):
            values = out[b, c][changed[b, c]]
            assert torch.allclose(values, means[b, c].expand_as(values))
    module.eval()
    assert module(x) is x


def test_spec_augment_checks_inputs():
    with pytest.raises(TypeError, match="expected floating point audio features, got torch.int64"):
        SpecAugment()(torch.zeros(2, 6, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected audio features of shape \(B, C, F, T\)"):
        SpecAugment()(torch.zeros(6, 8, 8))
    with pytest.raises(ValueError, match="expected fill"):
        SpecAugment(fill="noise")
    assert "max_fraction=0.1" in repr(SpecAugment(seed=0))


# -- channel swap -------------------------------------------------------------------------------

def test_channel_swap_is_its_own_inverse_and_swaps_the_blocks():
    x = audio(4)
    swap = ChannelSwap(p=1.0, seed=0)
    once = swap(x)
    assert torch.equal(once, torch.cat([x[:, 3:], x[:, :3]], dim=1))
    assert torch.equal(swap(once), x)
    assert torch.equal(ChannelSwap(p=0.0, seed=0)(x), x)
    half = ChannelSwap(p=0.5, seed=2)(x[:1].expand(400, -1, -1, -1))
    swapped = (half[:, 0] == x[0, 3]).all(dim=(1, 2)).float().mean()
    assert 0.4 < float(swapped) < 0.6
    swap.eval()
    assert swap(x) is x
    with pytest.raises(ValueError, match="expected 6 feature channels, got 4"):
        ChannelSwap()(torch.zeros(2, 4, 8, 8))


# -- joint mixup and the loss ----------------------------------------------------------------

def mixup_inputs(batch: int = 20):
    """Every sample its own class, so a mixed target names the partner."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(batch)
    return (torch.randn(batch, 6, 16, 8, generator=gen), torch.randn(batch, 2, 3, 8, 8, generator=gen),
            one_hot(labels, batch), labels)


@pytest.mark.parametrize("alpha,inplace", [(None, False), (0.4, False), (None, True)])
def test_mixup_uses_one_ratio_for_audio_frames_and_labels(alpha, inplace):
    a, v, t, labels = mixup_inputs(20)
    module = JointMixup(fraction=0.2, ratio=0.4, alpha=alpha, inplace=inplace, seed=1)
    a2, v2_, t2 = module(a.clone(), v.clone(), t.clone())
    assert torch.allclose(t2.sum(dim=1), torch.ones(20))
    mixed = torch.nonzero((t2 != t).any(dim=1)).flatten().tolist()
    assert len(mixed) == 4  # 20% of 20
    ratios = []
    for i in mixed:
        (j,) = [k for k in range(20) if k != i and t2[i, k] > 0]
        r = float(t2[i, j])
        ratios.append(r)
        assert abs(float(t2[i, i]) - (1 - r)) < 1e-6
        torch.testing.assert_close(a2[i], (1 - r) * a[i] + r * a[j])
        torch.testing.assert_close(v2_[i], (1 - r) * v[i] + r * v[j])
    if alpha is None:
        assert np.allclose(ratios, 0.4)
    else:
        assert len(set(ratios)) == 4 and all(0 < r < 1 for r in ratios)
    untouched = [i for i in range(20) if i not in mixed]
    assert torch.equal(a2[untouched], a[untouched]) and torch.equal(v2_[untouched], v[untouched])
    module.eval()
    assert module(a, v, t)[0] is a


def test_mixup_partners_are_other_samples_and_ratios_follow_beta():
    module = JointMixup(fraction=1.0, alpha=0.4, seed=2)
    who, partner, ratio = module.draw(64, 64, torch.device("cpu"))
    assert sorted(who.tolist()) == list(range(64)) and (who != partner).all()
    from scipy import stats

    samples = beta_sample(0.4, 20000, torch.Generator().manual_seed(0), torch.device("cpu")).numpy()
    assert stats.kstest(samples, stats.beta(0.4, 0.4).cdf).pvalue > 1e-3
    samples = beta_sample(2.0, 20000, torch.Generator().manual_seed(1), torch.device("cpu")).numpy()
    assert stats.kstest(samples, stats.beta(2.0, 2.0).cdf).pvalue > 1e-3


def test_mixup_checks_inputs():
    a, v, t, labels = mixup_inputs(4)
    with pytest.raises(TypeError, match="expected floating point frames"):
        JointMixup()(a, v.to(torch.uint8), t)
    with pytest.raises(TypeError, match=r"expected \(B, K\) floating point targets"):
        JointMixup()(a, v, labels)
    with pytest.raises(ValueError, match="expected 4 frame rows, got 3"):
        JointMixup()(a, v[:3], t)
    assert "ratio=0.4" in repr(JointMixup(seed=0)) and "Beta(0.5" in repr(JointMixup(alpha=0.5, seed=0))


def test_configs_round_trip_through_yaml(tmp_path):
    augment = BatchAugmentConfig(mixup_alpha=0.3, video_kernels="batched")
    loader = LoaderConfig(num_workers=4, aug_fraction=0.5)
    dump_yaml({"batch_augment": augment, "loader": loader}, tmp_path / "c.yaml")
    assert load_section(tmp_path / "c.yaml", "batch_augment", BatchAugmentConfig) == augment
    assert load_section(tmp_path / "c.yaml", "loader", LoaderConfig) == loader
    with pytest.raises(ValueError, match="expected video_ops within"):
        BatchAugmentConfig(video_ops=("Rotate",))
    with pytest.raises(ValueError, match="expected 0 <= video_magnitude < 31"):
        BatchAugmentConfig(video_magnitude=31)
    with pytest.raises(ValueError, match="expected aug_fraction within"):
        LoaderConfig(aug_fraction=1.5)


# -- generators and configs ------------------------------------------------------------------

def test_generator_state_travels_in_the_state_dict():
    module = SpecAugment(seed=5)
    x = audio(4)
    module(x)
    state = module.state_dict()
    expected = module(x)
    restored = SpecAugment(seed=99)
    restored.load_state_dict(state)
    assert torch.equal(restored(x), expected)
    passed = SpecAugment(generator=torch.Generator().manual_seed(0))
    assert passed(x).shape == x.shape
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator's device"):
            passed(x.cuda())
