"""The location-disjoint split and the epoch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avsc_pipeline.dataio.samplers import EpochSampler, location_split, split_items


def random_locations(n: int = 600, classes: int = 5, per_class: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    identifiers = np.array([f"c{label}-loc{rng.integers(per_class)}" for label in labels])
    return identifiers, labels


def test_location_split_shares_no_identifier_and_holds_out_a_tenth():
    identifiers, labels = random_locations()
    split = split_items(identifiers, labels, np.zeros(len(labels), bool), val_fraction=0.1, seed=3)
    assert not set(identifiers[split.train]) & set(identifiers[split.validation])
    assert len(split.train) + len(split.validation) == len(labels)
    for label in range(5):
        held = {i for i in identifiers[split.validation][labels[split.validation] == label]}
        assert len(held) == 2  # 10% of 20 locations
    again = location_split(identifiers, labels, 0.1, seed=3)
    assert again.tolist() == split.held_out.tolist()
    assert location_split(identifiers, labels, 0.1, seed=4).tolist() != again.tolist()


def test_split_keeps_augmented_rows_of_held_out_locations_out():
    identifiers, labels = random_locations()
    augmented = np.arange(len(labels)) % 3 == 0
    split = split_items(identifiers, labels, augmented, 0.1, seed=0)
    assert not augmented[split.train].any() and not augmented[split.validation].any()
    assert augmented[split.augmented].all()
    assert not np.isin(identifiers[split.augmented], split.held_out).any()
    assert np.isin(identifiers[augmented & ~np.isin(identifiers, split.held_out)],
                   identifiers[split.augmented]).all()


def test_epoch_sampler_shuffles_and_draws_a_new_augmented_subset_each_epoch():
    sampler = EpochSampler(np.arange(100), np.arange(100, 200), aug_fraction=0.3, seed=1)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        items = np.array(list(sampler))
        assert len(items) == len(sampler) == 130 and len(set(items)) == 130
        assert set(range(100)) <= set(items.tolist()) and (items >= 100).sum() == 30
        epochs.append(items)
    assert set(epochs[0][epochs[0] >= 100]) != set(epochs[1][epochs[1] >= 100])
    assert epochs[0].tolist() != sorted(epochs[0].tolist())
    sampler.set_epoch(0)
    assert list(sampler) == epochs[0].tolist()


def test_epoch_sampler_shards_like_distributed_sampler():
    items = np.arange(10, 33)  # 23 items over 4 processes: padded to 24
    ours = [list(EpochSampler(items, shuffle=False, num_replicas=4, rank=r)) for r in range(4)]
    reference = [list(torch.utils.data.DistributedSampler(range(23), num_replicas=4, rank=r, shuffle=False))
                 for r in range(4)]
    assert ours == [[int(items[i]) for i in ref] for ref in reference]
    shuffled = [EpochSampler(items, seed=5, num_replicas=4, rank=r, drop_last=True) for r in range(4)]
    for sampler in shuffled:
        sampler.set_epoch(2)
    parts = [list(s) for s in shuffled]
    assert all(len(p) == 5 for p in parts)
    assert len(set(sum(parts, []))) == 20
    with pytest.raises(ValueError, match="expected 0 <= rank < 4"):
        EpochSampler(items, num_replicas=4, rank=4)
