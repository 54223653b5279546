"""Module-owned generators (their state travels in the state dict) and Beta draws against scipy."""

from __future__ import annotations

import pytest
import torch

from avsc_pipeline.dataio.batch_augment import SpecAugment
from avsc_pipeline.dataio.rng import beta_sample


def test_generator_state_travels_in_the_state_dict():
    module = SpecAugment(seed=5)
    x = torch.randn(4, 6, 128, 39, generator=torch.Generator().manual_seed(0))
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


def test_beta_sample_follows_the_beta_distribution():
    from scipy import stats

    samples = beta_sample(0.4, 20000, torch.Generator().manual_seed(0), torch.device("cpu")).numpy()
    assert stats.kstest(samples, stats.beta(0.4, 0.4).cdf).pvalue > 1e-3
    samples = beta_sample(2.0, 20000, torch.Generator().manual_seed(1), torch.device("cpu")).numpy()
    assert stats.kstest(samples, stats.beta(2.0, 2.0).cdf).pvalue > 1e-3
