"""Offline augmentation speed per core: the fast operations against the librosa effects.

Measured in one run, on one thread, one 10-second 48 kHz stereo clip at a time:

1. each waveform operation: the fast implementation (vectorized phase vocoder, soxr) against the
   librosa effects (`librosa.effects.pitch_shift`, `librosa.effects.time_stretch`,
   `librosa.resample`) on the same clip, the parameters drawn as the defaults draw them;
2. the whole augmentation of a clip as `avsc-features augment` does it (load, the four
   operations with the default (the authors') variants, features of each result): fast against
   the librosa implementation, in augmented clips/s;
3. that whole augmentation against the clip's stage-one feature extraction (`extract_clip`,
   with and without its video frames).

Uses the real clips in ../shared/data/tau-av-street-mini when present, else generated ones.

    .venv/bin/python bench/bench_offline_augment.py [--clips 8] [--repeat 3]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np

from common import int_options


def best_of(fns: Sequence[Callable[[], object]], repeat: int) -> List[float]:
    """Fastest of `repeat` timed calls of each function, in seconds, after one warm-up call each.

    The functions are called in turn (a, b, a, b, ...) so that load from other processes on a
    shared machine falls on all of them alike.
    """
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def load_clips(tmp: Path, n: int) -> List:
    from avsc_pipeline.corpus.manifest import load_manifest
    from avsc_pipeline.testing import make_tau_dataset
    from common import shared_mini

    mini = shared_mini()
    if mini is not None:
        print(f"clips: {mini} (real, 10 s, 48 kHz stereo)")
        return load_manifest(mini, "all")[:n]
    print("clips: generated 10 s 48 kHz stereo (../shared/data/tau-av-street-mini not found)")
    root = make_tau_dataset(tmp / "ds", n_clips=2 * n, seconds=10.0, classes=["bus"])
    return load_manifest(root, "all")[:n]


def per_clip(items: Sequence, fns: Sequence[Callable], repeat: int) -> List[float]:
    """For each function, the mean over items of the best time of `fn(item)`, measured in turn."""
    per_item = [best_of([lambda f=f, x=x: f(x) for f in fns], repeat) for x in items]
    return [float(v) for v in np.mean(per_item, axis=0)]


def main() -> None:
    args = int_options(__doc__, clips=8, repeat=3)

    import torch

    from avsc_pipeline.sections.features import FeatureConfig
    from avsc_pipeline.features.audio import load_audio
    from avsc_pipeline.sections.features import OfflineAugmentConfig
    from avsc_pipeline.features.offline_augment import FAST_DSP, add_fixed_noise, add_noise, draw_params, mix
    from avsc_pipeline.testing import librosa_dsp
    from avsc_pipeline.features.offline_augment_shards import augment_clip, plan_items
    from avsc_pipeline.features.extract import extract_clip

    torch.set_num_threads(1)
    fc = FeatureConfig()
    config = OfflineAugmentConfig()
    resample = dataclasses.replace(config, speed_method="resample", speed_factor=(0.9, 1.1))
    with tempfile.TemporaryDirectory() as tmp:
        clips = load_clips(Path(tmp), args.clips)
        audio = {c.clip_id: load_audio(c.audio, fc) for c in clips}
        print(f"{len(clips)} clips, best of {args.repeat} after a warm-up, torch threads: 1\n")

        print(f"{'operation (waveform only)':<28}{'fast ms':>10}{'librosa ms':>12}{'speed-up':>10}")
        ops = {
            "pitch": lambda b, c: b.pitch_shift(audio[c.clip_id], fc.sample_rate,
                                                draw_params(config, c.clip_id, "pitch", 0).semitones),
            "speed (time stretch)": lambda b, c: b.change_tempo(audio[c.clip_id],
                                                                draw_params(config, c.clip_id, "speed", 0).stretch),
            "speed (resample)": lambda b, c: b.change_speed(audio[c.clip_id], fc.sample_rate,
                                                            draw_params(resample, c.clip_id, "speed", 0).speed),
        }
        for name, op in ops.items():
            fast, slow = per_clip(clips, [lambda c, op=op: op(FAST_DSP, c),
                                          lambda c, op=op: op(librosa_dsp(), c)], args.repeat)
            print(f"{name:<28}{1e3 * fast:>10.1f}{1e3 * slow:>12.1f}{slow / fast:>9.2f}x")
        rng = np.random.default_rng(0)
        fixed, noise, mixing = per_clip(clips, [lambda c: add_fixed_noise(audio[c.clip_id], 0.01, rng),
                                                lambda c: add_noise(audio[c.clip_id], 20.0, rng),
                                                lambda c: mix(audio[c.clip_id], audio[clips[0].clip_id], 0.7, 0.6)],
                                         args.repeat)
        print(f"{'noise fixed (same code)':<28}{1e3 * fixed:>10.1f}")
        print(f"{'noise at an SNR (same code)':<28}{1e3 * noise:>10.1f}")
        print(f"{'mix (same code)':<28}{1e3 * mixing:>10.1f}\n")

        rows = {(c.clip_id, s): 0 for c in clips for s in range(20)}
        classes = sorted({c.label for c in clips})
        items = plan_items(clips, config, fc, classes, rows, "-")
        fast, slow, audio_only, with_video = per_clip(range(len(clips)), [
            lambda i: augment_clip(items[i], fc, config),
            lambda i: augment_clip(items[i], fc, config, dsp=librosa_dsp()),
            lambda i: extract_clip(clips[i], fc, with_video=False),
            lambda i: extract_clip(clips[i], fc, with_video=True),
        ], args.repeat)
        print("whole augmentation of a clip (load + pitch, speed, noise, mix + features of each):")
        print(f"  fast dsp          {1e3 * fast:8.1f} ms/clip  {1 / fast:6.2f} clips/s = {4 / fast:5.1f} augmented clips/s per core")
        print(f"  librosa effects   {1e3 * slow:8.1f} ms/clip  {1 / slow:6.2f} clips/s = {4 / slow:5.1f} augmented clips/s per core")
        print(f"  speed-up          {slow / fast:8.2f}x\n")
        print("against the clip's stage-one feature extraction (extract_clip):")
        print(f"  audio + video     {1e3 * with_video:8.1f} ms/clip  augmentation / extraction = {fast / with_video:.2f}x"
              f" (librosa effects: {slow / with_video:.2f}x)")
        print(f"  audio only        {1e3 * audio_only:8.1f} ms/clip  augmentation / extraction = {fast / audio_only:.2f}x"
              f" (4 augmented versions, so >= 4x by construction; per version {fast / 4 / audio_only:.2f}x)")


if __name__ == "__main__":
    main()
