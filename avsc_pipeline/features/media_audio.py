"""The sound inside a video file: how most users' recordings (phones, cameras) come.

:func:`load_track_audio` decodes the first audio stream of an MP4 (or another container PyAV
opens) to float32 stereo at the feature sample rate, so that `avsc-predict` can classify a lone
MP4 as stage one classifies a WAV and its video.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Tuple

import numpy as np

from avsc_pipeline.errors import BadClipError, check_media_file
from avsc_pipeline.sections.features import FeatureConfig

logger = logging.getLogger(__name__)

#: File suffixes read as video containers (their sound, where a WAV is not given).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")


def is_video_file(path: "str | os.PathLike[str]") -> bool:
    """Whether `path` names a video container (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def load_track_audio(path: "str | os.PathLike[str]", config: FeatureConfig) -> Tuple[np.ndarray, str]:
    """The first audio stream of a video file as float32 `(2, n)` at `config.sample_rate`.

    Returns:
        The audio and a description of the stream used (codec, rate, channels), for messages.

    Raises:
        BadClipError: a missing or undecodable file, no audio stream, or sound shorter than
            one segment.
    """
    import av

    path = os.fspath(path)
    check_media_file(path, "video")
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise BadClipError(path, "no audio stream in this video file (give its WAV before it)")
            stream = container.streams.audio[0]
            described = (f"audio track of {Path(path).name} ({stream.codec_context.name}, {stream.rate} Hz, "
                         f"{stream.channels} channel{'s' if stream.channels != 1 else ''})")
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=config.sample_rate)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except (av.FFmpegError, OSError, ValueError) as err:
        raise BadClipError(path, f"cannot decode the audio track ({err})") from None
    if not chunks:
        raise BadClipError(path, "the audio track holds no samples")
    audio = np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32)
    if audio.shape[1] < config.segment_samples:
        raise BadClipError(path, f"clip too short: {audio.shape[1]} samples of sound at {config.sample_rate} Hz, "
                                 f"expected at least {config.segment_samples} (one segment)")
    logger.info("%s: using the %s", path, described)
    return audio, described
