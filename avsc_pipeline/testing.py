"""Small media and shard builders for tests and benchmarks (everything is made in a given folder).

Kept in the library, as lhotse does, so every test and benchmark builds its own data.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from avsc_pipeline.config import FeatureConfig
from avsc_pipeline.manifest import TAU_CLASSES


def noisy_tone(seconds: float, sr: int = 48000, freq: float = 440.0, noise: float = 1e-3,
               seed: int = 0, channels: int = 2) -> np.ndarray:
    """A tone plus white noise, float32 `(channels, n)`; the noise keeps every mel band above
    float32 rounding so fast and reference features are comparable."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    rows = [
        0.3 * (0.7 ** c) * np.sin(2 * np.pi * freq * (1 + 0.1 * c) * t) + noise * rng.standard_normal(t.size)
        for c in range(channels)
    ]
    return np.stack(rows).astype(np.float32)


def write_wav(path: "str | os.PathLike[str]", audio: np.ndarray, sr: int = 48000, subtype: str = "PCM_16") -> Path:
    """Write `(channels, n)` float audio as a WAV file."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(audio).T, sr, subtype=subtype)
    return path


def frame_pattern(index: int, height: int, width: int) -> np.ndarray:
    """RGB frame `(H, W, 3)` uint8 whose mean brightness encodes `index` (0..255 levels apart by 1).

    Each frame has a distinct flat grey level `(index * 7) % 256` in the red channel and
    `index // 37` in green, so decoded frames can be matched to their index even after lossy
    compression (levels are compared with a tolerance).
    """
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[..., 0] = (index * 7) % 256
    frame[..., 1] = min(255, (index // 37) * 32)
    frame[..., 2] = 128
    return frame


def write_video(path: "str | os.PathLike[str]", n_frames: int, fps: int = 30, width: int = 64,
                height: int = 48, pattern=frame_pattern) -> Path:
    """Write an H.264 MP4 with `n_frames` frames at `fps`, frame i = `pattern(i, height, width)`."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast", "g": "60"}
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_tau_dataset(root: "str | os.PathLike[str]", n_clips: int = 4, seconds: float = 3.0, fps: int = 30,
                     classes: Sequence[str] = TAU_CLASSES, sr: int = 48000,
                     video_seconds: Optional[float] = None) -> Path:
    """A tiny data set in the TAU layout: `n_clips` clips cycling through `classes`.

    Clip i is `<class>-city<i % 3>-<100 + i>-<i>`; fold1 train gets even clips, evaluate odd ones.
    """
    root = Path(root)
    rows: List[List[str]] = []
    for i in range(n_clips):
        label = classes[i % len(classes)]
        stem = f"{label}-city{i % 3}-{100 + i}-{i}"
        write_wav(root / "audio" / f"{stem}.wav", noisy_tone(seconds, sr, 300.0 + 50 * i, seed=i), sr)
        vid_s = seconds if video_seconds is None else video_seconds
        write_video(root / "video" / f"{stem}.mp4", int(round(vid_s * fps)), fps)
        rows.append([f"audio/{stem}.wav", f"video/{stem}.mp4", label, f"city{i % 3}-{100 + i}"])
    _write_tsv(root / "meta.csv", ["filename_audio", "filename_video", "scene_label", "identifier"], rows)
    setup = root / "evaluation_setup"
    _write_tsv(setup / "fold1_train.csv", ["filename_audio", "filename_video", "scene_label"],
               [r[:3] for r in rows[0::2]])
    _write_tsv(setup / "fold1_evaluate.csv", ["filename_audio", "filename_video", "scene_label"],
               [r[:3] for r in rows[1::2]])
    _write_tsv(setup / "fold1_test.csv", ["filename_audio", "filename_video"], [r[:2] for r in rows[1::2]])
    return root


def _write_tsv(path: Path, header: List[str], rows: List[List[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_random_shard(path: "str | os.PathLike[str]", n_rows: int, config: FeatureConfig = FeatureConfig(),
                       classes: Sequence[str] = TAU_CLASSES, seed: int = 0,
                       identifiers: int = 4, with_video: bool = True) -> Path:
    """A shard of random features in the stage-one schema (10 segments per clip).

    Labels cycle over clips; identifiers cycle over `identifiers` locations per class.
    """
    from avsc_pipeline.storage.shards import ShardWriter, shard_attrs, stage_one_columns

    rng = np.random.default_rng(seed)
    clip = np.arange(n_rows) // 10
    label = (clip % len(classes)).astype(np.int16)
    columns = dict(
        audio=rng.standard_normal((n_rows,) + config.audio_shape).astype(config.audio_dtype),
        label=label,
        clip_id=[f"s{seed}-clip{c}" for c in clip],
        segment=(np.arange(n_rows) % 10).astype(np.int16),
        identifier=[f"loc{seed}-{label[i]}-{clip[i] % identifiers}" for i in range(n_rows)],
        variant=["orig"] * n_rows,
    )
    if with_video:
        columns["video"] = rng.integers(0, 256, (n_rows,) + config.video_shape, dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(path, stage_one_columns(config, with_video), shard_attrs(classes, config, f"random{seed}")) as w:
        w.add(**columns)
    return path


def kill_when_shards(command: Sequence[str], folder: "str | os.PathLike[str]", count: int,
                     timeout: float = 120.0) -> int:
    """Start `command`, SIGKILL it once `folder` holds `count` finished shards (or it exits).

    Returns:
        How many finished shards the folder held after the kill.
    """
    import signal
    import subprocess
    import time

    from avsc_pipeline.storage.shards import list_shards

    proc = subprocess.Popen(list(command))
    deadline = time.time() + timeout
    while time.time() < deadline and len(list_shards(folder)) < count and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list_shards(folder))
