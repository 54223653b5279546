"""Cost per batch of SpecAugment, channel swap, joint mixup and the whole BatchPreparer.

Each batched module (one call on a `(32, 6, 128, 39)` audio batch and, for mixup and the
preparer, `(32, 2, 3, 224, 224)` frames) against its baseline measured in the same run: the
same augmentation written as a Python loop over the samples, as a per-sample dataset transform
would apply it. Also shown: one copy of the batch (`clone`), the floor for any out-of-place
operation, and the whole BatchPreparer in train mode against eval mode (normalization only;
train adds RandAugment on the frames, which dominates on CPU). Ratio = baseline / batched.
On CPU, and on CUDA when present. Cases run alternately, best of `--repeat`.

Run: .venv/bin/python bench/bench_batch_augment.py [--batch 32] [--repeat 20]
"""

from __future__ import annotations

import random
import time
from typing import Callable, Dict, Tuple

import torch

from avsc_pipeline.dataio.batch_augment import ChannelSwap, JointMixup, SpecAugment, one_hot
from avsc_pipeline.sections.loading import BatchAugmentConfig
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.stats import AudioStats
from common import int_options


def loop_spec_augment(audio: torch.Tensor) -> torch.Tensor:
    out = audio.clone()
    for sample in out:
        for axis, length in ((1, sample.shape[1]), (2, sample.shape[2])):
            width = random.randint(0, int(0.1 * length))
            start = random.randint(0, length - width)
            index = [slice(None)] * 3
            index[axis] = slice(start, start + width)
            sample[tuple(index)] = sample.mean(dim=(1, 2), keepdim=True)
    return out


def loop_channel_swap(audio: torch.Tensor) -> torch.Tensor:
    out = audio.clone()
    for sample in out:
        if random.random() < 0.5:
            sample.copy_(torch.cat([sample[3:], sample[:3]]))
    return out


def loop_mixup(audio: torch.Tensor, video: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    a, v, t = audio.clone(), video.clone(), target.clone()
    for i in random.sample(range(len(a)), round(0.2 * len(a))):
        j = random.choice([k for k in range(len(a)) if k != i])
        a[i], v[i], t[i] = 0.6 * audio[i] + 0.4 * audio[j], 0.6 * video[i] + 0.4 * video[j], 0.6 * target[i] + 0.4 * target[j]
    return a, v, t


def best_times(cases: Dict[str, Callable[[], object]], sync: Callable[[], None], repeat: int) -> Dict[str, float]:
    best = {name: float("inf") for name in cases}
    for fn in cases.values():
        fn()
    for _ in range(repeat):
        for name, fn in cases.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def cases_for(device: torch.device, batch: int) -> Dict[str, Tuple[Callable[[], object], Callable[[], object]]]:
    """name -> (baseline loop, batched module call) on `device`."""
    gen = torch.Generator().manual_seed(0)
    audio = torch.randn(batch, 6, 128, 39, generator=gen).to(device)
    frames = torch.randint(0, 256, (batch, 2, 3, 224, 224), dtype=torch.uint8, generator=gen)
    video = frames.to(device).float()
    target = one_hot(torch.arange(batch) % 10, 10).to(device)
    spec, swap, mix = SpecAugment(seed=0), ChannelSwap(seed=0), JointMixup(inplace=True, seed=0)
    stats = AudioStats((0.0,) * 6, (1.0,) * 6, 1, "", ())
    preparer = BatchPreparer(10, stats, augment=BatchAugmentConfig(), seed=0).to(device)
    raw = {"audio": audio.cpu(), "video": frames, "label": torch.arange(batch) % 10}
    return {
        "clone of the audio batch": (lambda: audio.clone(), lambda: audio.clone()),
        "SpecAugment": (lambda: loop_spec_augment(audio), lambda: spec(audio)),
        "ChannelSwap": (lambda: loop_channel_swap(audio), lambda: swap(audio)),
        "JointMixup in place (audio+frames+targets)": (lambda: loop_mixup(audio, video, target),
                                                  lambda: mix(audio, video, target)),
        "BatchPreparer: eval as baseline, train": (lambda: preparer.eval()(raw), lambda: preparer.train()(raw)),
    }


def main() -> None:
    args = int_options(__doc__, batch=32, repeat=20)
    random.seed(0)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"batch {args.batch}, {torch.get_num_threads()} CPU threads; microseconds per batch, best of {args.repeat}")
    print(f"  {'':40s} {'baseline loop':>14s} {'batched':>10s} {'ratio':>9s}")
    for device in devices:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        print(f" {device.type}:")
        for name, (loop, batched) in cases_for(device, args.batch).items():
            best = best_times({"loop": loop, "batched": batched}, sync, args.repeat)
            print(f"  {name:40s} {best['loop'] * 1e6:14.0f} {best['batched'] * 1e6:10.0f} "
                  f"{best['loop'] / best['batched']:8.2f}x")


if __name__ == "__main__":
    main()
