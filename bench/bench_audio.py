"""Audio features: segments/s of the fast PyTorch path against the librosa reference loop.

Targets (issue "Stage one"): at least 3x on one thread and 5x on two. Also sweeps the batch
size (segments per FFT batch) to justify FastLogMel's default.

Run: .venv/bin/python bench/bench_audio.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from avsc_pipeline.features.config import FeatureConfig
from avsc_pipeline.features.audio import FastLogMel, load_audio, reference_features, split_segments
from common import best_of, real_or_generated_dataset


def main() -> None:
    cfg = FeatureConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root, what = real_or_generated_dataset(Path(tmp), 4)
        segments = np.concatenate([split_segments(load_audio(p, cfg), cfg) for p in sorted((root / "audio").glob("*.wav"))])
    n = len(segments)
    print(f"audio features on {n} one-second segments of {what}")
    reference_features(segments[:1], cfg)  # warm up librosa (numba, caches)
    fast = FastLogMel(cfg)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ref_s = best_of(lambda: reference_features(segments[:10], cfg), 2) * n / 10
        print(f"threads={threads}: reference {n / ref_s:8.1f} seg/s")
        for batch in (1, 2, 5, 10, 40):
            fast.batch_segments = batch
            fast_s = best_of(lambda: fast(segments), 3)
            print(f"  fast batch={batch:3d} {n / fast_s:8.1f} seg/s  ratio {ref_s / fast_s:5.2f}x")
        fast.batch_segments = None
        fast_s = best_of(lambda: fast(segments), 3)
        target = 3 if threads == 1 else 5
        print(f"  fast default      {n / fast_s:8.1f} seg/s  ratio {ref_s / fast_s:5.2f}x (target {target}x)")


if __name__ == "__main__":
    main()
