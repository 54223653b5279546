"""Video frames: the frame pair of each second, decoded in one sequential pass.

For segment `k` the frames nearest to presentation times `k + t` for `t` in
`FeatureConfig.frame_times` (0 and 14/30 s: the 1st and 15th frame at 30 fps) are kept. Times
count from the first decoded frame, so a stream whose first timestamp is not zero (edit lists,
B-frame delay) still maps frame `i` to `i / fps`. Decoding is sequential and stops at the last
frame needed: seeking per frame is 5-9x slower on video with sparse keyframes.

:func:`resize_frames` is the one resize that stage one, training, evaluation and prediction use.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from avsc_pipeline.errors import BadClipError, check_media_file

logger = logging.getLogger(__name__)


def resize_frames(frames: "torch.Tensor | np.ndarray", size: int = 224) -> "torch.Tensor":
    """Resize RGB frames to `size` x `size` with antialiasing (bilinear).

    Args:
        frames: uint8 `(..., 3, H, W)` tensor, or a uint8 `(..., H, W, 3)` numpy array as decoded.

    Returns:
        uint8 tensor `(..., 3, size, size)` on the input's device.
    """
    import torch
    from torchvision.transforms.v2 import functional as F

    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (..., H, W, 3) array, got {frames.dtype} {frames.shape}")
        frames = torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3)
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(frames).__name__}")
    if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected a uint8 (..., 3, H, W) tensor, got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[-2:] == (size, size):
        return frames.contiguous()
    return F.resize(frames, [size, size], antialias=True).contiguous()


def target_times(n_segments: int, frame_times: Sequence[float]) -> np.ndarray:
    """`(n_segments, len(frame_times))` presentation times in seconds, row k = k + frame_times."""
    return np.arange(n_segments, dtype=np.float64)[:, None] + np.asarray(frame_times, dtype=np.float64)[None, :]


def _open_video(path: str):
    import av

    check_media_file(path, "video")
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise BadClipError(path, f"cannot open video ({err})") from err
    if not container.streams.video:
        container.close()
        raise BadClipError(path, "no video stream")
    return container


def select_frames(path: "str | os.PathLike[str]", times: np.ndarray,
                  threads: Optional[int] = None) -> Tuple[List[Optional[np.ndarray]], float]:
    """Decode once, keeping the RGB frame nearest to each of the sorted `times`.

    Args:
        path: video file.
        times: 1-D sorted presentation times in seconds, relative to the first frame.
        threads: threads for decoding and colour conversion; None lets FFmpeg choose (as many
            as cores, right for one process; a worker among N on N cores wants 1).

    Returns:
        One uint8 `(H, W, 3)` array per time, None where the video has ended before that time
        (a time is covered while it is before the last frame's time plus one frame period), and
        the stream's frame rate.

    Raises:
        BadClipError: missing, empty or undecodable file, no video stream, or no frames.
    """
    import av
    from av.video.reformatter import VideoReformatter

    path = os.fspath(path)
    container = _open_video(path)
    # One reformatter for the whole pass keeps one swscale context (2x faster than per frame).
    rgb = VideoReformatter()
    times = np.asarray(times, dtype=np.float64)
    out: List[Optional[np.ndarray]] = [None] * len(times)
    try:
        stream = container.streams.video[0]
        if threads:
            stream.codec_context.thread_count = threads
        rate = float(stream.average_rate or stream.guessed_rate or 30)
        j, start, prev, prev_t, index = 0, None, None, 0.0, 0
        for frame in _decode_near(container, stream, times, rate):
            t_abs = frame.time if frame.time is not None else index / rate
            index += 1
            start = t_abs if start is None else start
            t = t_abs - start
            while j < len(times) and t >= times[j]:
                nearer_prev = prev is not None and times[j] - prev_t <= t - times[j]
                chosen = prev if nearer_prev else frame
                out[j] = rgb.reformat(chosen, format="rgb24", threads=threads).to_ndarray()
                j += 1
            if j == len(times):
                break
            prev, prev_t = frame, t
        if prev is None and out[0] is None:
            raise BadClipError(path, "video has no frames")
        while j < len(times) and prev is not None and times[j] < prev_t + 1.0 / rate:
            out[j] = rgb.reformat(prev, format="rgb24", threads=threads).to_ndarray()
            j += 1
    except av.FFmpegError as err:
        raise BadClipError(path, f"cannot decode video ({err})") from err
    finally:
        container.close()
    return out, rate


# Frames farther than this many frame periods from every wanted time are not needed; the margin
# covers a first frame whose timestamp differs from the stream's start by a frame or two.
SKIP_MARGIN_FRAMES = 2.5


def _decode_near(container, stream, times: np.ndarray, rate: float):
    """Decode `stream` in order, letting the decoder skip non-reference frames far from `times`.

    A non-reference frame (a B-frame in H.264) that no later frame depends on is dropped by the
    decoder when its timestamp is more than SKIP_MARGIN_FRAMES periods from every wanted time,
    so it can never be the nearest frame to one. Reference frames are always decoded, so the
    frames that are returned are exactly those of a full decode, minus skipped ones. This is
    about 10-15% less decoding than a full pass on the real clips (`bench/bench_video.py`).
    """
    from bisect import bisect_left

    codec = stream.codec_context
    base = float(stream.time_base) if stream.time_base else 0.0
    start = (stream.start_time or 0) * base
    margin = SKIP_MARGIN_FRAMES / rate
    wanted = times.tolist()
    mode = None
    for packet in container.demux(stream):
        near = True
        if packet.pts is not None and base:
            t = packet.pts * base - start
            k = bisect_left(wanted, t)
            near = (k < len(wanted) and wanted[k] - t < margin) or (k > 0 and t - wanted[k - 1] < margin)
        if near is not mode:  # setting the option costs more than comparing
            codec.skip_frame = "DEFAULT" if near else "NONREF"
            mode = near
        yield from codec.decode(packet)


def read_frame_pairs(
    path: "str | os.PathLike[str]", n_segments: int, frame_times: Sequence[float], size: int = 224,
    threads: Optional[int] = None,
) -> np.ndarray:
    """Frames of the first `n_segments` seconds of a video (`threads`: see :func:`select_frames`).

    Returns:
        uint8 `(K, len(frame_times), 3, size, size)` where K <= n_segments is the number of
        leading segments whose frames all exist (a video shorter than its audio gives fewer).

    Raises:
        BadClipError: see :func:`select_frames`.
    """
    times = target_times(n_segments, frame_times)
    frames, _ = select_frames(path, times.ravel(), threads)
    per_seg = len(frame_times)
    kept = 0
    while kept < n_segments and all(f is not None for f in frames[kept * per_seg : (kept + 1) * per_seg]):
        kept += 1
    if kept == 0:
        return np.zeros((0, per_seg, 3, size, size), dtype=np.uint8)
    shapes = {f.shape for f in frames[: kept * per_seg]}
    if len(shapes) != 1:
        raise BadClipError(os.fspath(path), f"frame size changes within the video: {sorted(shapes)}")
    stacked = np.stack(frames[: kept * per_seg])  # (K*F, H, W, 3)
    resized = resize_frames(stacked, size).numpy()
    return resized.reshape(kept, per_seg, 3, size, size)
