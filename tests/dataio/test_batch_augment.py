"""Batch augmentation modules: SpecAugment, channel swap and joint mixup, drawn per sample
and switched off in eval()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsc_pipeline.dataio.batch_augment import ChannelSwap, JointMixup, SpecAugment, one_hot


def audio(batch: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 6, 128, 39, generator=torch.Generator().manual_seed(seed))


# -- SpecAugment ------------------------------------------------------------------------------

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
    with pytest.raises(ValueError, match=r"expected 6 feature channels or 2 \(one per audio channel\), got 4"):
        ChannelSwap()(torch.zeros(2, 4, 8, 8))


# -- joint mixup ----------------------------------------------------------------------------

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


def test_mixup_partners_are_other_samples():
    module = JointMixup(fraction=1.0, alpha=0.4, seed=2)
    who, partner, ratio = module.draw(64, 64, torch.device("cpu"))
    assert sorted(who.tolist()) == list(range(64)) and (who != partner).all()


def test_mixup_checks_inputs():
    a, v, t, labels = mixup_inputs(4)
    with pytest.raises(TypeError, match="expected floating point frames"):
        JointMixup()(a, v.to(torch.uint8), t)
    with pytest.raises(TypeError, match=r"expected \(B, K\) floating point targets"):
        JointMixup()(a, v, labels)
    with pytest.raises(ValueError, match="expected 4 frame rows, got 3"):
        JointMixup()(a, v[:3], t)
    assert "ratio=0.4" in repr(JointMixup(seed=0)) and "Beta(0.5" in repr(JointMixup(alpha=0.5, seed=0))


def test_spec_augment_per_channel_draws_masks_for_each_channel():
    from avsc_pipeline.dataio.batch_augment import SpecAugment

    audio = torch.ones(16, 6, 128, 39)
    shared = SpecAugment(1, 1, 0.1, fill="zero", seed=0).train()(audio)
    own = SpecAugment(1, 1, 0.1, fill="zero", seed=0, per_channel=True).train()(audio)
    # One set of masks covers all six channels alike; per channel, the channels differ.
    assert all(torch.equal(shared[:, 0], shared[:, c]) for c in range(6))
    assert any(not torch.equal(own[i, 0], own[i, c]) for i in range(16) for c in range(1, 6))
    # Every channel's masks stay within 10% of each axis: at most 12 bins and 3 frames.
    zero = own == 0
    assert int(zero.all(dim=3).sum(dim=2).max()) <= 12 and int(zero.all(dim=2).sum(dim=2).max()) <= 3
