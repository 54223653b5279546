"""The batch augmentations draw a batch's randomness at once (one uniform tensor per module, Beta
ratios in blocks); their distributions are those of the per-sample draws they replaced, kept
here as the reference (`old_*`), compared on many draws with chi-square and Kolmogorov-Smirnov
tests. A resumed module continues the same stream, across a Beta block's refill."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from avsc_pipeline.dataio import batch_augment
from avsc_pipeline.dataio.batch_augment import ChannelSwap, JointMixup, SpecAugment, one_hot
from avsc_pipeline.dataio.rng import beta_sample
from avsc_pipeline.dataio.video_augment import VideoRandAugment

CPU = torch.device("cpu")
P_MIN = 1e-3  # a correct implementation fails one of these tests about once in a thousand runs


# -- the per-sample draws of before (the reference) ------------------------------------------------

def old_randint_inclusive(high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(high.shape, generator=generator, dtype=torch.float64)
    return torch.minimum((u * (high + 1).to(torch.float64)).floor().to(torch.int64), high)


def old_axis_mask(rows: int, length: int, count: int, top: int, gen: torch.Generator) -> torch.Tensor:
    """The old `SpecAugment._axis_mask`: per axis, a width then a start per mask."""
    mask = torch.zeros((rows, length), dtype=torch.bool)
    if count == 0 or top == 0:
        return mask
    width = old_randint_inclusive(torch.full((rows, count), top), gen)
    start = old_randint_inclusive(length - width, gen)
    pos = torch.arange(length).view(1, 1, length)
    return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(dim=1)


def old_swap(audio: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    batch = audio.shape[0]
    swap = (torch.rand(batch, generator=gen) < p).long()
    first = 2 * torch.arange(batch) + swap
    order = torch.stack([first, first + 1 - 2 * swap], dim=1).flatten()
    return audio.reshape(2 * batch, -1).index_select(0, order).view(audio.shape)


def old_mixup_draw(batch: int, count: int, alpha, gen: torch.Generator):
    who = torch.randperm(batch, generator=gen)[:count]
    offset = torch.randint(1, batch, (count,), generator=gen)
    ratio = beta_sample(alpha, count, gen, CPU) if alpha is not None else torch.full((count,), 0.4)
    return who, (who + offset) % batch, ratio


def old_video_draw(n: int, num_ops: int, n_ops: int, gen: torch.Generator):
    op_ids = torch.randint(n_ops, (n, num_ops), generator=gen)
    negate = torch.rand((n, num_ops), generator=gen) <= 0.5
    centres = torch.rand((n, num_ops, 2), generator=gen)
    return op_ids, negate, centres


# -- helpers ----------------------------------------------------------------------------------------

def same_counts(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """p-value of a chi-square test that two samples of integers in `0..bins-1` share a law."""
    table = np.stack([np.bincount(a, minlength=bins), np.bincount(b, minlength=bins)])
    table = table[:, table.sum(axis=0) > 0]
    return stats.chi2_contingency(table)[1]


# -- SpecAugment --------------------------------------------------------------------------------------

@pytest.mark.parametrize("freq_masks,time_masks", [(1, 1), (2, 2)])
def test_spec_augment_masks_follow_the_per_sample_law(freq_masks, time_masks):
    rows, n_freq, n_time = 20000, 128, 39
    module = SpecAugment(time_masks, freq_masks, 0.1, fill="zero", seed=0)
    freq, time = module.masks(rows, n_freq, n_time, CPU)
    gen = torch.Generator().manual_seed(1)
    old_freq = old_axis_mask(rows, n_freq, freq_masks, module.max_width(n_freq), gen)
    old_time = old_axis_mask(rows, n_time, time_masks, module.max_width(n_time), gen)
    for new, old, length in ((freq, old_freq, n_freq), (time, old_time, n_time)):
        # how much of a row is masked, and where
        width_p = same_counts(new.sum(1).numpy(), old.sum(1).numpy(), length + 1)
        cells_p = same_counts(np.nonzero(new.numpy())[1], np.nonzero(old.numpy())[1], length)
        assert width_p > P_MIN and cells_p > P_MIN, (length, width_p, cells_p)
    assert int(freq.sum(1).max()) <= freq_masks * 12 and int(time.sum(1).max()) <= time_masks * 3


def test_spec_augment_per_channel_draws_one_tensor_for_all_channels(monkeypatch):
    calls = []
    real = torch.rand

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    module = SpecAugment(1, 1, 0.1, fill="zero", seed=0, per_channel=True)
    monkeypatch.setattr(torch, "rand", counting)
    out = module(torch.ones(16, 6, 128, 39))
    assert calls == [(2, 16 * 6, 2)]  # one draw: width and start of 2 masks of 96 sample channels
    assert any(not torch.equal(out[i, 0], out[i, c]) for i in range(16) for c in range(1, 6))


# -- channel swap --------------------------------------------------------------------------------------

def test_channel_swap_draws_as_before_and_gives_the_same_batch():
    audio = torch.randn(64, 6, 16, 8, generator=torch.Generator().manual_seed(0))
    new = ChannelSwap(0.5, seed=3)(audio)
    old = old_swap(audio, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(new, old)


# -- joint mixup -----------------------------------------------------------------------------------------

def test_mixup_positions_partners_and_ratios_follow_the_per_sample_law():
    batch, count, batches = 32, 7, 3000
    module = JointMixup(fraction=count / batch, alpha=0.4, seed=0)
    gen = torch.Generator().manual_seed(1)
    new = [module.draw(batch, count, CPU) for _ in range(batches)]
    old = [old_mixup_draw(batch, count, 0.4, gen) for _ in range(batches)]

    def flat(draws, part):
        return torch.cat([d[part] for d in draws]).numpy()

    assert same_counts(flat(new, 0), flat(old, 0), batch) > P_MIN  # each position mixed alike
    offsets = [(flat(d, 1) - flat(d, 0)) % batch for d in (new, old)]
    assert offsets[0].min() >= 1 and same_counts(*offsets, batch) > P_MIN  # never itself, uniform offset
    assert all(len(set(d[0].tolist())) == count for d in new)  # distinct positions in a batch
    ratios_new, ratios_old = flat(new, 2), flat(old, 2)
    assert stats.ks_2samp(ratios_new, ratios_old).pvalue > P_MIN
    assert stats.kstest(ratios_new, stats.beta(0.4, 0.4).cdf).pvalue > P_MIN


def test_mixup_draws_its_beta_ratios_in_blocks(monkeypatch):
    monkeypatch.setattr(batch_augment, "BETA_BLOCK", 20)
    drawn = []
    real = batch_augment.beta_sample
    monkeypatch.setattr(batch_augment, "beta_sample", lambda *a, **k: drawn.append(a[1]) or real(*a, **k))
    module = JointMixup(fraction=0.5, alpha=0.4, seed=0)
    for _ in range(10):
        module.draw(8, 4, CPU)
    assert drawn == [20, 20]  # 5 batches of 4 ratios per block


def test_a_resumed_mixup_continues_the_same_ratios_across_a_refill(monkeypatch):
    monkeypatch.setattr(batch_augment, "BETA_BLOCK", 12)
    labels = torch.arange(8)

    def batches(module, n):
        out = []
        for i in range(n):
            gen = torch.Generator().manual_seed(i)
            audio, video = torch.randn(8, 6, 4, 4, generator=gen), torch.randn(8, 2, 3, 4, 4, generator=gen)
            out.append(module(audio, video, one_hot(labels, 8)))
        return out

    first = JointMixup(fraction=0.5, alpha=0.4, seed=5)
    batches(first, 2)  # 8 of 12 ratios used
    state = {k: v for k, v in first.state_dict().items()}
    expected = batches(first, 3)  # crosses the refill
    resumed = JointMixup(fraction=0.5, alpha=0.4, seed=99)
    resumed.load_state_dict(state)
    for got, want in zip(batches(resumed, 3), expected):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_a_captured_mixup_reads_its_ratios_at_the_cursor():
    """The CUDA graph's path, run eagerly: advance on the host, read at the device cursor."""
    eager, captured = JointMixup(fraction=0.5, alpha=0.4, seed=2), JointMixup(fraction=0.5, alpha=0.4, seed=2)
    cursor = torch.zeros((), dtype=torch.int64)
    captured.capturing(cursor)
    for _ in range(5):
        want = eager.draw(8, 4, CPU)
        cursor.fill_(captured.advance(4, CPU))
        got = captured.draw(8, 4, CPU)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(TypeError, match=r"expected a \(\) int64 tensor"):
        captured.capturing(torch.zeros(1))


# -- video RandAugment -------------------------------------------------------------------------------------

def test_video_draws_follow_the_per_image_law():
    ops = ("Identity", "Sharpness", "Contrast", "Cutout")
    module = VideoRandAugment(ops, num_ops=2, seed=0)
    n = 20000
    op_ids, magnitudes, centres = module._draw_all(n, CPU, (32, 32))
    old_ids, old_negate, old_centres = old_video_draw(n, 2, len(ops), torch.Generator().manual_seed(1))
    assert same_counts(op_ids.flatten().numpy(), old_ids.flatten().numpy(), len(ops)) > P_MIN
    sharp = op_ids == 1  # a signed operation: negative about half the time, as before
    negative = (magnitudes[sharp] < 0).long().numpy()
    old_negative = old_negate[old_ids == 1].long().numpy()
    assert same_counts(negative, old_negative, 2) > P_MIN
    for axis in range(2):
        assert stats.ks_2samp(centres[..., axis].flatten().numpy(), old_centres[..., axis].flatten().numpy()).pvalue \
            > P_MIN
