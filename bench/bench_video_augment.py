"""Video perturbation throughput: batched per-image RandAugment against torchvision v2 per image.

Baseline: `torchvision.transforms.v2.RandAugment` restricted to Identity, Sharpness and Contrast
(N=2, M=14), called on one 224x224 uint8 image at a time in a Python loop on the CPU, as a
per-sample dataset transform would. Candidates: `VideoRandAugment` on a whole batch of
32 samples x 2 frames, with the `batched` kernels and with the `per_image` loop of torchvision
functions, on the CPU with 1 and 2 threads, and on CUDA when present (target there: at least
20x the per-image CPU loop). Baseline and candidates run alternately, best of `--repeat`.

Run: .venv/bin/python bench/bench_video_augment.py [--batch 32] [--repeat 5]
"""

from __future__ import annotations

import time
from typing import Callable, Dict

import torch
from torchvision.transforms import v2

from avsc_pipeline.dataio.video_augment import VideoRandAugment
from common import int_options


class RestrictedRandAugment(v2.RandAugment):
    """torchvision's RandAugment with its operation space cut to the three the recipe uses."""

    _AUGMENTATION_SPACE = {op: v2.RandAugment._AUGMENTATION_SPACE[op] for op in ("Identity", "Sharpness", "Contrast")}


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def run(cases: Dict[str, Callable[[], object]], syncs: Dict[str, Callable[[], None]], repeat: int) -> Dict[str, float]:
    """Best wall time of each case, the cases interleaved."""
    best = {name: float("inf") for name in cases}
    for name, fn in cases.items():
        timed(fn, syncs[name])  # warm-up
    for _ in range(repeat):
        for name, fn in cases.items():
            best[name] = min(best[name], timed(fn, syncs[name]))
    return best


def main() -> None:
    args = int_options(__doc__, batch=32, repeat=5)
    video = torch.randint(0, 256, (args.batch, 2, 3, 224, 224), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    n_images = args.batch * 2
    images = video.view(n_images, 3, 224, 224)
    baseline = RestrictedRandAugment(num_ops=2, magnitude=14)
    threads = torch.get_num_threads()

    def with_threads(count: int, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            torch.set_num_threads(count)
            try:
                return fn()
            finally:
                torch.set_num_threads(threads)
        return call

    cases: Dict[str, Callable[[], object]] = {
        "torchvision v2 RandAugment per image, CPU (baseline)": lambda: [baseline(img) for img in images],
    }
    for count in sorted({1, threads}):
        for kernels in ("per_image", "batched"):
            module = VideoRandAugment(kernels=kernels, seed=0)
            cases[f"VideoRandAugment {kernels}, CPU {count} thread(s)"] = with_threads(count, lambda m=module: m(video))
    syncs = {name: (lambda: None) for name in cases}
    if torch.cuda.is_available():
        on_gpu = video.cuda()
        module = VideoRandAugment(kernels="batched", seed=0)
        cases["VideoRandAugment batched, CUDA"] = lambda: module(on_gpu)
        syncs["VideoRandAugment batched, CUDA"] = torch.cuda.synchronize
    best = run(cases, syncs, args.repeat)
    base = best["torchvision v2 RandAugment per image, CPU (baseline)"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"{n_images} images of 224x224 per call (N=2, M=14), {threads} CPU threads, {device}")
    for name, seconds in best.items():
        target = "  (target >= 20x)" if "CUDA" in name else ""
        print(f"  {name:52s} {n_images / seconds:9.0f} images/s  {base / seconds:6.2f}x{target}")


if __name__ == "__main__":
    main()
