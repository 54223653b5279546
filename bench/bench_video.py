"""Video frames: clips/s of frame-pair extraction against a bare PyAV sequential decode.

The bare baseline decodes every frame of the same file and does nothing with it; extraction
decodes up to the last frame needed, converts the chosen frames to RGB and resizes them.
Target (issue "Stage one"): at least 0.9x, i.e. decoding is the only real cost. Both sides run on
one core, as in an extraction worker (`--jobs N` gives each of N workers cores/N torch threads);
the figure with two torch threads is printed too (torch's second OpenMP thread keeps spinning
after the resize and slows the next decode on a 2-core machine).

Run: .venv/bin/python bench/bench_video.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import av
import torch

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.features.video import read_frame_pairs
from common import best_of_pair, real_or_generated_dataset


def bare_decode(paths) -> None:
    for path in paths:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                pass


def extract(paths, cfg: FeatureConfig) -> None:
    for path in paths:
        read_frame_pairs(path, 10, cfg.frame_times, cfg.image_size)


def main() -> None:
    cfg = FeatureConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root, what = real_or_generated_dataset(Path(tmp), 8)
        paths = sorted((root / "video").glob("*.mp4"))
        extract(paths[:1], cfg)  # warm up torchvision
        n = len(paths)
        print(f"video frames of {n} clips of {what}")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            bare, ours = best_of_pair(lambda: bare_decode(paths), lambda: extract(paths, cfg), 15)
            target = " (target 0.9x)" if threads == 1 else ""
            print(f"  torch threads={threads}: bare PyAV decode {n / bare:6.2f} clips/s, frame extraction "
                  f"{n / ours:6.2f} clips/s, ratio {bare / ours:5.2f}x{target}")


if __name__ == "__main__":
    main()
