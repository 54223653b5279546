"""Random single-sample reads from shards against a numpy memmap of the same arrays.

Also measures the layouts we did not choose (one-sample chunks, 16-sample chunks with the
default chunk cache, gzip) so the choice of contiguous datasets stays justified.
Target (issue "Stage one"): contiguous HDF5 at least 0.8x the memmap.

Run: .venv/bin/python bench/bench_shard_reads.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.features.extract import extract_split
from avsc_pipeline.corpus.tau import TAU_CLASSES, load_tau
from avsc_pipeline.storage.shard_io import ShardReaders, open_shard_file
from avsc_pipeline.storage.columns import read_columns
from avsc_pipeline.storage.shards import list_shards
from common import real_or_generated_dataset

N_READS = 400


def row_reader(path: Path):
    """The training path's reads: rows copied from memory maps at the HDF5 offsets."""
    shard, _ = open_shard_file(path)
    readers = ShardReaders()
    audio = np.empty(shard.audio.shape, shard.audio.dtype)
    video = np.empty(shard.video.shape, shard.video.dtype)

    def read(i: int):
        readers.read(shard, "audio", i, audio)
        readers.read(shard, "video", i, video)
        return audio, video

    return read


def layouts(folder: Path, audio: np.ndarray, video: np.ndarray, attrs: dict) -> dict:
    """Write the same arrays in each layout; returns name -> reader(i) -> (audio, video)."""
    np.save(folder / "audio.npy", audio)
    np.save(folder / "video.npy", video)
    mm_a = np.load(folder / "audio.npy", mmap_mode="r")
    mm_v = np.load(folder / "video.npy", mmap_mode="r")
    buf_a, buf_v = np.empty(audio.shape[1:], audio.dtype), np.empty(video.shape[1:], video.dtype)

    def memmap_read(i: int):
        buf_a[...] = mm_a[i]
        buf_v[...] = mm_v[i]
        return buf_a, buf_v

    readers = {"numpy memmap": memmap_read}
    options = {"contiguous, h5py index": {}, "chunks of 1": {"chunks": True, "one": True},
               "chunks of 16": {"chunks": True}, "gzip chunks of 1": {"chunks": True, "one": True, "gzip": True}}
    for name, opt in options.items():
        path = folder / f"{name.split()[0]}-{len(readers)}.h5"
        with h5py.File(path, "w") as handle:
            for key, arr in (("audio", audio), ("video", video)):
                kwargs = {}
                if opt.get("chunks"):
                    kwargs["chunks"] = (1 if opt.get("one") else 16,) + arr.shape[1:]
                if opt.get("gzip"):
                    kwargs["compression"] = "gzip"
                handle.create_dataset(key, data=arr, **kwargs)
            handle.attrs.update(attrs)
            handle.attrs["rows"] = len(audio)
        handle = h5py.File(path, "r")
        readers[name] = (lambda a, v: lambda i: (a[i], v[i]))(handle["audio"], handle["video"])
        if not opt:
            readers["contiguous, ShardReaders"] = row_reader(path)
    return readers


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, what = real_or_generated_dataset(tmp / "ds", 8)
        extract_split(load_tau(root, "all"), tmp / "f", FeatureConfig(), list(TAU_CLASSES), progress=False)
        first = list_shards(tmp / "f")[0]
        rows = read_columns(first, ["audio", "video"])
        with h5py.File(first, "r") as handle:
            attrs = dict(handle.attrs)
        reps = max(1, 400 // len(rows["audio"]))
        audio, video = np.concatenate([rows["audio"]] * reps), np.concatenate([rows["video"]] * reps)
        print(f"random single-sample reads of {len(audio)} segments of {what} (page cache warm)")
        readers = layouts(tmp, audio, video, attrs)
        order = np.random.default_rng(0).integers(0, len(audio), N_READS)
        times = {}
        for _ in range(3):
            for name, read in readers.items():
                start = time.perf_counter()
                for i in order:
                    read(int(i))
                times[name] = min(times.get(name, np.inf), time.perf_counter() - start)
        base = times["numpy memmap"]
        for name, t in times.items():
            target = " (chosen; target 0.8x)" if name.endswith("ShardReaders") else ""
            print(f"  {name:24s} {N_READS / t:8.0f} samples/s  ratio {base / t:5.2f}x{target}")


if __name__ == "__main__":
    main()
