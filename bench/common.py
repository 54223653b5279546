"""Shared helpers for the benchmarks: timing and data sets built in a temporary folder."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Callable, Tuple

SHARED_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau-av-street-mini"


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest wall time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def real_or_generated_dataset(folder: Path, n_clips: int) -> Tuple[Path, str]:
    """A TAU-layout folder of `n_clips` 10-second clips.

    Uses the real clips of ../shared/data/tau-av-street-mini (linked under new names, cycling)
    where present, else generated ones. Returns the root and a description.
    """
    from avsc_pipeline.testing import make_tau_dataset

    if not (SHARED_MINI / "meta.csv").is_file():
        return make_tau_dataset(folder, n_clips=n_clips, seconds=10.0), "generated 10 s clips (30 fps, 64x48)"
    sources = sorted(p.stem for p in (SHARED_MINI / "audio").glob("*.wav"))
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    (folder / "video").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_clips):
        src = sources[i % len(sources)]
        city, loc = src.split("-")[1:3]
        stem = f"street_traffic-{city}-{loc}-{i}"
        for kind, ext in (("audio", "wav"), ("video", "mp4")):
            dst = folder / kind / f"{stem}.{ext}"
            if not dst.exists():
                os.symlink(SHARED_MINI / kind / f"{src}.{ext}", dst)
        rows.append([f"audio/{stem}.wav", f"video/{stem}.mp4", "street_traffic", f"{city}-{loc}"])
    with open(folder / "meta.csv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename_audio", "filename_video", "scene_label", "identifier"])
        writer.writerows(rows)
    return folder, "real TAU clips (48 kHz stereo, 24 fps 400x225 H.264)"


def best_of_pair(baseline: Callable[[], object], candidate: Callable[[], object], repeat: int = 5) -> Tuple[float, float]:
    """Fastest wall times of two functions, run alternately so that load on a shared machine
    affects both alike."""
    best_a = best_b = float("inf")
    for _ in range(repeat):
        best_a = min(best_a, best_of(baseline, 1))
        best_b = min(best_b, best_of(candidate, 1))
    return best_a, best_b
