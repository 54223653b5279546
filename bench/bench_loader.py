"""Training loader throughput against reading the same arrays from a numpy memmap.

Random-order batches of 32 (audio float32 + frame pairs uint8, 0.42 MB per sample) through
`make_loader` (ShardDataset -> BatchReads -> ShardLoader) with 0 and 2 workers, against the
baseline: fancy-indexing the same rows, in the same random order, out of `np.load(mmap_mode="r")`
arrays in the main process. Page cache warm for both. Baseline and candidate run alternately,
and the best epoch of each counts, so load from other processes on a shared machine affects
both alike. Also reported: `ShardDataset.read_batch` alone (no DataLoader) and the same loader
with torch's own per-batch shared memory instead of the reused slots.

Target (issue "Stage two input"): the loader with 2 workers at least 0.7x the memmap.

Run: .venv/bin/python bench/bench_loader.py [--rows 1600] [--epochs 4]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

from avsc_pipeline.dataio import loader as loader_mod
from avsc_pipeline.sections.loading import LoaderConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.samplers import EpochSampler
from avsc_pipeline.storage.columns import read_columns
from avsc_pipeline.storage.shards import list_shards
from avsc_pipeline.testing import write_random_folder
from common import int_options

BATCH = 32
SHARD_ROWS = 200


def build(folder: Path, rows: int) -> None:
    """Shards of random rows plus .npy copies of the same audio and frames."""
    write_random_folder(folder / "train", [SHARD_ROWS] * (rows // SHARD_ROWS))
    parts = [read_columns(p, ["audio", "video"]) for p in list_shards(folder / "train")]
    np.save(folder / "audio.npy", np.concatenate([p["audio"] for p in parts]))
    np.save(folder / "video.npy", np.concatenate([p["video"] for p in parts]))


def memmap_epoch(folder: Path) -> Callable[[int], int]:
    audio = np.load(folder / "audio.npy", mmap_mode="r")
    video = np.load(folder / "video.npy", mmap_mode="r")

    def run(epoch: int) -> int:
        order = np.random.default_rng(epoch).permutation(len(audio))
        count = 0
        for start in range(0, len(order) - BATCH + 1, BATCH):
            rows = order[start:start + BATCH]
            batch = (torch.from_numpy(audio[rows]), torch.from_numpy(video[rows]))
            count += len(batch[0])
        return count

    return run


def read_batch_epoch(dataset: ShardDataset) -> Callable[[int], int]:
    def run(epoch: int) -> int:
        order = np.random.default_rng(epoch).permutation(len(dataset))
        count = 0
        for start in range(0, len(order) - BATCH + 1, BATCH):
            count += len(dataset.read_batch(order[start:start + BATCH], audio_float32=False)["audio"])
        return count

    return run


def loader_epoch(dataset: ShardDataset, workers: int, pooled: bool = True) -> Callable[[int], int]:
    config = LoaderConfig(batch_size=BATCH, num_workers=workers, persistent_workers=True)
    sampler = EpochSampler(np.arange(len(dataset)), seed=0)
    loader = loader_mod.make_loader(dataset, sampler, config, "cpu")
    if not pooled:
        loader.dataset.slots = 0  # every batch in new shared memory, as torch does by itself

    def run(epoch: int) -> int:
        sampler.set_epoch(epoch)
        return sum(len(batch["audio"]) for batch in loader)

    run(0)  # start the persistent workers outside the timing
    return run


def best_rates(runs: Dict[str, Callable[[int], int]], epochs: int) -> Dict[str, float]:
    """Samples/s of each run's best epoch, the runs interleaved epoch by epoch."""
    best = {name: 0.0 for name in runs}
    for epoch in range(1, epochs + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            count = run(epoch)
            best[name] = max(best[name], count / (time.perf_counter() - start))
    return best


def main() -> None:
    args = int_options(__doc__, rows=1600, epochs=4)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder, args.rows)
        dataset = ShardDataset([folder / "train"])
        runs = {
            "numpy memmap (baseline)": memmap_epoch(folder),
            "ShardDataset.read_batch": read_batch_epoch(dataset),
            "loader, 0 workers": loader_epoch(dataset, 0),
            "loader, 2 workers": loader_epoch(dataset, 2),
            "loader, 2 workers, torch shm": loader_epoch(dataset, 2, pooled=False),
        }
        rates = best_rates(runs, args.epochs)
    base = rates["numpy memmap (baseline)"]
    print(f"random batches of {BATCH}, {args.rows} rows ({args.rows * 0.42:.0f} MB), "
          f"torch threads {torch.get_num_threads()}, best of {args.epochs} epochs")
    for name, rate in rates.items():
        target = "  (target >= 0.7x)" if name == "loader, 2 workers" else ""
        print(f"  {name:30s} {rate:8.0f} samples/s  {rate / base:5.2f}x{target}")


if __name__ == "__main__":
    main()
