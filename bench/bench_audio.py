"""Audio features: segments/s of the fast PyTorch path against the librosa reference loop.

Both measured in this process, for the default definition (the authors': hop 1024 centred, HTK
mel, natural log, per-second [0, 1] scaling, regression deltas) and the earlier one
(configs/features/librosa-db.yaml). Targets: at least 4x on one thread for the default (issue
"The paper's own definitions"); at least 3x on one thread and 5x on two for the earlier one
(issue "Stage one"). Also sweeps the batch size (segments per FFT batch) to justify
FastLogMel's default.

Run: .venv/bin/python bench/bench_audio.py [--threads-max 2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from avsc_pipeline.features.audio import FastLogMel, load_audio, reference_features, split_segments
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.sections import load_section
from common import best_of_pair, int_options, real_or_generated_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TARGETS = {"authors (default)": {1: 4.0}, "librosa-db": {1: 3.0, 2: 5.0}}


def measure(name: str, cfg: FeatureConfig, segments: np.ndarray, threads_max: int) -> None:
    """Print reference and fast segments/s and their ratio per thread count and batch size."""
    n = len(segments)
    print(f"\n{name}: {cfg.audio_shape}, {cfg.stft_frames} STFT frames per second")
    reference_features(segments[:1], cfg)  # warm up librosa (numba, caches)
    fast = FastLogMel(cfg)
    sample = segments[:10]
    for threads in range(1, threads_max + 1):
        torch.set_num_threads(threads)
        ratios = []
        for batch in (1, 2, 5, 10, None):
            fast.batch_segments = batch
            # alternate reference and fast runs so load from other processes hits both alike;
            # the reference's BLAS (numpy's) gets the same number of threads as torch
            with threadpool_limits(threads):
                ref_s, fast_s = best_of_pair(lambda: reference_features(sample, cfg), lambda: fast(segments), 3)
            ref_s *= n / len(sample)
            ratios.append(ref_s / fast_s)
            label = "default" if batch is None else f"batch={batch:3d}"
            print(f"  threads={threads} fast {label:<9} {n / fast_s:8.1f} seg/s, reference {n / ref_s:7.1f} seg/s,"
                  f"  ratio {ref_s / fast_s:5.2f}x")
        target = TARGETS[name].get(threads)
        if target is not None:
            verdict = "ok" if ratios[-1] >= target else "BELOW TARGET"
            print(f"  threads={threads} default ratio {ratios[-1]:5.2f}x (target {target}x): {verdict}")


def main() -> None:
    args = int_options(__doc__, threads_max=2)
    configs = {"authors (default)": FeatureConfig(),
               "librosa-db": load_section(CONFIGS / "features" / "librosa-db.yaml", "features", FeatureConfig)}
    with tempfile.TemporaryDirectory() as tmp:
        root, what = real_or_generated_dataset(Path(tmp), 4)
        wavs = sorted((root / "audio").glob("*.wav"))
        segments = np.concatenate([split_segments(load_audio(p, FeatureConfig()), FeatureConfig()) for p in wavs])
    print(f"audio features on {len(segments)} one-second segments of {what}")
    for name, cfg in configs.items():
        measure(name, cfg, segments, args.threads_max)


if __name__ == "__main__":
    main()
