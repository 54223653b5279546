"""Which items an epoch reads, in which order, on which process.

- :func:`location_split` holds out a fraction of each class's recording locations
  (`identifier`) for validation, as the official DCASE 2021 Task 1b baseline does (10%), with a
  fixed seed; :func:`split_items` applies it to a dataset (or takes a separate selection split's
  rows as the validation rows), keeping out of training every augmented row whose own location,
  or whose offline-mixing partner's, is held out.
- :class:`EpochSampler` shuffles each epoch, adds a fresh random `aug_fraction` of the augmented
  rows every epoch, and shards the epoch over `num_replicas` processes exactly as
  `torch.utils.data.DistributedSampler` does (padding by wrapping around, or dropping the tail).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch


def location_split(identifiers: np.ndarray, labels: np.ndarray, val_fraction: float = 0.1,
                   seed: int = 0) -> np.ndarray:
    """The locations held out for validation.

    For each class (in label order), its distinct locations are sorted, shuffled with a
    generator seeded by `seed`, and the first `round(val_fraction * n)` are held out (at least
    one when `val_fraction > 0` and the class has two or more; never all of them). A location
    held out for one class is held out everywhere.

    Args:
        identifiers: `(N,)` str location of each item.
        labels: `(N,)` int class of each item.
        val_fraction: fraction of each class's locations held out, in [0, 1).
        seed: seed of the split.

    Returns:
        Sorted `(M,)` str array of held-out locations.
    """
    identifiers, labels = np.asarray(identifiers), np.asarray(labels)
    if identifiers.shape != labels.shape or identifiers.ndim != 1:
        raise ValueError(f"expected identifiers and labels of equal 1-D shape, got {identifiers.shape} and {labels.shape}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"expected 0 <= val_fraction < 1, got {val_fraction!r}")
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        locations = np.unique(identifiers[labels == label])
        count = _held_count(len(locations), val_fraction)
        held.extend(rng.permutation(locations)[:count].tolist())
    return np.unique(np.asarray(held, dtype=identifiers.dtype))


def _held_count(n_locations: int, val_fraction: float) -> int:
    if val_fraction == 0 or n_locations < 2:
        return 0
    return min(max(1, int(round(val_fraction * n_locations))), n_locations - 1)


@dataclass(frozen=True)
class Split:
    """Item positions of a location-disjoint split.

    Attributes:
        train: original items of the training locations.
        augmented: augmented items of the training locations.
        validation: original items of the held-out locations.
        held_out: the held-out locations.
    """

    train: np.ndarray
    augmented: np.ndarray
    validation: np.ndarray
    held_out: np.ndarray


def split_items(identifiers: np.ndarray, labels: np.ndarray, is_augmented: np.ndarray,
                val_fraction: float = 0.1, seed: int = 0, partner_locations: Optional[Sequence[Optional[str]]] = None,
                selection: Optional[np.ndarray] = None) -> Split:
    """Split a dataset's items by location (see :func:`location_split`).

    The held-out locations are chosen among the original items only (or, with `selection`, are
    the locations of the selection split's items). No item of a held-out location trains, and
    no augmented item whose offline-mixing partner comes from one, or whose partner is unknown
    (it could): either would put a held-out location's audio into training.

    Args:
        identifiers: `(N,)` str location per item (e.g. `ShardDataset.identifiers`).
        labels: `(N,)` int class per item.
        is_augmented: `(N,)` bool, True for augmented items.
        val_fraction: fraction of each class's locations held out (not used with `selection`).
        seed: seed of the split.
        partner_locations: `(N,)` the location of each item's mixing partner: '' for an item
            without one, None where a partner exists but is unknown. None: no item has one.
        selection: `(N,)` bool, True for the items of a separate selection split (e.g. the
            `evaluate` folder): they are the validation items and their locations the held-out
            ones. None: hold out `val_fraction` of the training locations.

    Raises:
        ValueError: arrays of other shapes, or augmented items in the selection split.
    """
    identifiers, labels = np.asarray(identifiers), np.asarray(labels)
    is_augmented = np.asarray(is_augmented, dtype=bool)
    if is_augmented.shape != identifiers.shape:
        raise ValueError(f"expected is_augmented of shape {identifiers.shape}, got {is_augmented.shape}")
    original = ~is_augmented
    if selection is None:
        held = location_split(identifiers[original], labels[original], val_fraction, seed)
        validation = original & np.isin(identifiers, held)
    else:
        validation = np.asarray(selection, dtype=bool)
        if validation.shape != identifiers.shape:
            raise ValueError(f"expected selection of shape {identifiers.shape}, got {validation.shape}")
        if (validation & is_augmented).any():
            raise ValueError(f"expected original items in the selection split, got "
                             f"{int((validation & is_augmented).sum())} augmented")
        held = np.unique(identifiers[validation])
    training = ~validation & ~np.isin(identifiers, held)
    return Split(
        train=np.flatnonzero(training & original),
        augmented=np.flatnonzero(training & is_augmented & _partner_outside(partner_locations, held, len(identifiers))),
        validation=np.flatnonzero(validation),
        held_out=held,
    )


def _partner_outside(partner_locations: Optional[Sequence[Optional[str]]], held: np.ndarray, count: int) -> np.ndarray:
    """`(N,)` bool: True where an item has no partner or a known one outside `held`."""
    if partner_locations is None:
        return np.ones(count, dtype=bool)
    partners = np.asarray(partner_locations, dtype=object)
    if partners.shape != (count,):
        raise ValueError(f"expected partner_locations of shape ({count},), got {partners.shape}")
    known = np.array([p is not None for p in partners], dtype=bool)
    named = np.where(known, partners, "").astype(str)
    return known & ((named == "") | ~np.isin(named, held.astype(str)))


class EpochSampler(torch.utils.data.Sampler):
    """Items of one epoch: originals plus a fresh subset of augmented rows, shuffled, sharded.

    Call :meth:`set_epoch` before each epoch (as with `DistributedSampler`); an epoch's order
    depends only on `(seed, epoch)`, so every process draws the same permutation and takes its
    own share: positions `rank, rank + num_replicas, ...` of the epoch padded by wrapping around
    to a multiple of `num_replicas` (or cut to one with `drop_last`).

    Args:
        items: dataset positions read every epoch (e.g. `Split.train`).
        augmented: dataset positions of augmented rows.
        aug_fraction: fraction of `augmented` drawn (without replacement) into each epoch.
        shuffle: shuffle each epoch; otherwise originals then augmented rows, in order.
        seed: seed shared by all processes.
        num_replicas: processes sharing the epoch; defaults to the `torch.distributed` world
            size when it is initialized, else 1.
        rank: this process's rank; defaults likewise.
        drop_last: cut the epoch to a multiple of `num_replicas` instead of padding it.
    """

    def __init__(self, items: Sequence[int], augmented: Sequence[int] = (), aug_fraction: float = 1.0,
                 shuffle: bool = True, seed: int = 0, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, drop_last: bool = False) -> None:
        self.items = np.asarray(items, dtype=np.int64).reshape(-1)
        self.augmented = np.asarray(augmented, dtype=np.int64).reshape(-1)
        if not 0.0 <= aug_fraction <= 1.0:
            raise ValueError(f"expected 0 <= aug_fraction <= 1, got {aug_fraction!r}")
        self.aug_fraction, self.shuffle, self.seed = aug_fraction, bool(shuffle), int(seed)
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    @property
    def epoch_size(self) -> int:
        """Items in one epoch over all processes, before padding or cutting."""
        return len(self.items) + int(round(self.aug_fraction * len(self.augmented)))

    def __len__(self) -> int:
        if self.drop_last:
            return self.epoch_size // self.num_replicas
        return math.ceil(self.epoch_size / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"expected an int epoch >= 0, got {epoch!r}")
        self.epoch = epoch

    def epoch_items(self) -> np.ndarray:
        """`(epoch_size,)` int64 positions of the whole epoch, before sharding."""
        rng = np.random.default_rng([self.seed, self.epoch])
        count = int(round(self.aug_fraction * len(self.augmented)))
        extra = self.augmented[np.sort(rng.permutation(len(self.augmented))[:count])]
        items = np.concatenate([self.items, extra])
        return items[rng.permutation(len(items))] if self.shuffle else items

    def __iter__(self) -> Iterator[int]:
        items = self.epoch_items()
        total = len(self) * self.num_replicas
        if total > len(items) and len(items):
            items = np.resize(items, total)  # wraps around, as DistributedSampler pads
        mine = items[:total][self.rank::self.num_replicas]
        return iter(mine.tolist())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(items={len(self.items)}, augmented={len(self.augmented)}, "
                f"aug_fraction={self.aug_fraction}, shuffle={self.shuffle}, seed={self.seed}, "
                f"rank={self.rank}/{self.num_replicas}, epoch={self.epoch})")


def _replicas(num_replicas: Optional[int], rank: Optional[int]) -> Tuple[int, int]:
    dist = torch.distributed
    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"expected num_replicas >= 1, got {num_replicas!r}")
    if not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"expected 0 <= rank < {num_replicas}, got {rank!r}")
    return num_replicas, rank
