"""Shared helpers for the benchmarks: timing and data sets built in a temporary folder."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable, Tuple


def int_options(doc: str, **defaults: int) -> argparse.Namespace:
    """A benchmark's command line: `--name N` for each keyword (underscores become dashes), its
    value the default; the help text is the first line of `doc` (the script's docstring)."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return parser.parse_args()


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest wall time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def shared_mini() -> "Path | None":
    """The real clips of ../shared/data/tau-av-street-mini beside a development checkout, or None."""
    mini = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau-av-street-mini"
    return mini if (mini / "meta.csv").is_file() else None


def real_or_generated_dataset(folder: Path, n_clips: int) -> Tuple[Path, str]:
    """A TAU-layout folder of `n_clips` 10-second clips.

    Uses the real clips of ../shared/data/tau-av-street-mini (linked under new names, cycling)
    where present, else generated ones. Returns the root and a description.
    """
    from avsc_pipeline.corpus.clips import write_tsv
    from avsc_pipeline.corpus.tau import META_HEADER
    from avsc_pipeline.testing import make_tau_dataset

    mini = shared_mini()
    if mini is None:
        return make_tau_dataset(folder, n_clips=n_clips, seconds=10.0), "generated 10 s clips (30 fps, 64x48)"
    sources = sorted(p.stem for p in (mini / "audio").glob("*.wav"))
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
                os.symlink(mini / kind / f"{src}.{ext}", dst)
        rows.append([f"audio/{stem}.wav", f"video/{stem}.mp4", "street_traffic", f"{city}-{loc}"])
    write_tsv(folder / "meta.csv", META_HEADER, rows)
    return folder, "real TAU clips (48 kHz stereo, 24 fps 400x225 H.264)"


def best_of_pair(baseline: Callable[[], object], candidate: Callable[[], object], repeat: int = 5) -> Tuple[float, float]:
    """Fastest wall times of two functions, run alternately so that load on a shared machine
    affects both alike."""
    best_a = best_b = float("inf")
    for _ in range(repeat):
        best_a = min(best_a, best_of(baseline, 1))
        best_b = min(best_b, best_of(candidate, 1))
    return best_a, best_b
