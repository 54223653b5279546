"""Audio features: per-second log-mel filter banks with deltas, both channels.

The definition (the contract with stage two) is :func:`reference_features`, written with
librosa exactly as the recipe states. :class:`FastLogMel` is the default implementation: the
same arithmetic batched in PyTorch (framed real FFT, librosa's mel filter bank, deltas as a fixed
matrix), matching the reference to within 1e-3 in every element.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

from avsc_pipeline.config import FeatureConfig
from avsc_pipeline.errors import BadClipError, check_media_file

logger = logging.getLogger(__name__)


def load_audio(path: "str | os.PathLike[str]", config: FeatureConfig) -> np.ndarray:
    """Read a clip as float32 `(2, n)` at `config.sample_rate`.

    Another sample rate is resampled (logged); mono is duplicated to two channels (logged).

    Raises:
        BadClipError: missing, empty, truncated or undecodable file, more than two channels, or
            shorter than one segment.
    """
    import soundfile as sf

    path = os.fspath(path)
    check_media_file(path, "audio")
    try:
        info = sf.info(path)
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise BadClipError(path, f"cannot decode audio ({err})") from err
    if data.shape[0] < info.frames:
        raise BadClipError(path, f"truncated audio: header says {info.frames} frames, read {data.shape[0]}")
    if data.shape[1] > 2:
        raise BadClipError(path, f"expected 1 or 2 channels, got {data.shape[1]}")
    if not np.all(np.isfinite(data)):
        raise BadClipError(path, "audio contains non-finite samples")
    audio = np.ascontiguousarray(data.T)
    if audio.shape[0] == 1:
        logger.info("%s: mono, duplicated to two channels", path)
        audio = np.repeat(audio, 2, axis=0)
    if rate != config.sample_rate:
        import librosa

        logger.info("%s: resampling %d Hz to %d Hz", path, rate, config.sample_rate)
        audio = librosa.resample(audio, orig_sr=rate, target_sr=config.sample_rate, axis=-1)
        audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.shape[1] < config.segment_samples:
        raise BadClipError(
            path,
            f"clip too short: {audio.shape[1]} samples at {config.sample_rate} Hz, expected at least "
            f"{config.segment_samples} (one segment)",
        )
    return audio


def n_segments(n_samples: int, config: FeatureConfig) -> int:
    """Number of whole non-overlapping segments in `n_samples` samples."""
    return n_samples // config.segment_samples


def split_segments(audio: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Cut `(2, n)` audio into `(K, 2, segment_samples)`, K = floor(n / segment_samples)."""
    if audio.ndim != 2:
        raise ValueError(f"expected audio of shape (channels, samples), got {audio.shape}")
    k = n_segments(audio.shape[1], config)
    seg = audio[:, : k * config.segment_samples].reshape(audio.shape[0], k, config.segment_samples)
    return np.ascontiguousarray(seg.transpose(1, 0, 2))


def reference_features(segments: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Features of `(K, 2, S)` segments with librosa, one segment and channel at a time.

    Returns:
        `(K, 6, n_mels, n_frames)` float32: `[L, dL, ddL]` of the left channel, then the right.
    """
    import librosa

    _check_segments(segments, config)
    out = np.empty((segments.shape[0],) + config.audio_shape, dtype=np.float32)
    for k, segment in enumerate(segments):
        for ch in range(2):
            mel = librosa.feature.melspectrogram(
                y=segment[ch], sr=config.sample_rate, n_fft=config.n_fft,
                hop_length=config.hop_length, window=config.window, center=config.center,
                power=config.power, n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax,
                htk=config.htk, norm=config.mel_norm,
            )
            log_mel = librosa.power_to_db(mel, ref=config.db_ref, amin=config.db_amin, top_db=config.db_top)
            out[k, 3 * ch] = log_mel
            out[k, 3 * ch + 1] = librosa.feature.delta(log_mel, width=config.delta_width, order=1)
            out[k, 3 * ch + 2] = librosa.feature.delta(log_mel, width=config.delta_width, order=2)
    return out


def _check_segments(segments: np.ndarray, config: FeatureConfig) -> None:
    expected = (2, config.segment_samples)
    if not isinstance(segments, np.ndarray) or segments.ndim != 3 or segments.shape[1:] != expected:
        shape = getattr(segments, "shape", type(segments).__name__)
        raise ValueError(f"expected segments of shape (K, {expected[0]}, {expected[1]}), got {shape}")


def delta_matrix(n_frames: int, width: int, order: int) -> np.ndarray:
    """`(T, T)` matrix D with `librosa.feature.delta(X, width, order) == X @ D` along time.

    librosa's delta is a Savitzky-Golay filter (mode 'interp'): linear in its input, so applying
    it to the identity gives the matrix once.
    """
    import librosa

    if n_frames < width:
        raise ValueError(f"expected at least width={width} frames for deltas, got {n_frames}")
    return librosa.feature.delta(np.eye(n_frames), width=width, order=order, axis=-1)


class FastLogMel:
    """Batched PyTorch implementation of :func:`reference_features`.

    Args:
        config: feature settings.
        batch_segments: segments per FFT batch; None picks 2 on one thread and 5 on more, the
            fastest sizes measured by `bench/bench_audio.py` (small batches stay in cache; on
            more threads a batch needs enough frames to split).
        device: torch device to compute on (CPU by default).
    """

    def __init__(self, config: FeatureConfig, batch_segments: Optional[int] = None, device: str = "cpu") -> None:
        import librosa
        import torch

        self.config = config
        self.batch_segments = batch_segments
        self.device = torch.device(device)
        window = librosa.filters.get_window(config.window, config.n_fft, fftbins=True)
        mel = librosa.filters.mel(
            sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin,
            fmax=config.fmax, htk=config.htk, norm=config.mel_norm,
        )
        t = config.n_frames
        deltas = np.stack([delta_matrix(t, config.delta_width, 1), delta_matrix(t, config.delta_width, 2)])
        self._window = torch.as_tensor(window, dtype=torch.float32, device=self.device)
        self._mel_t = torch.as_tensor(mel.T, dtype=torch.float32, device=self.device).contiguous()
        self._deltas = torch.as_tensor(deltas, dtype=torch.float32, device=self.device)
        self._db_offset = 10.0 * np.log10(max(config.db_amin, config.db_ref))

    def __repr__(self) -> str:
        return f"FastLogMel(shape={self.config.audio_shape}, batch_segments={self.batch_segments})"

    def __call__(self, segments: np.ndarray) -> np.ndarray:
        """Features of `(K, 2, S)` float32 segments as `(K, 6, n_mels, n_frames)` float32."""
        import torch

        _check_segments(segments, self.config)
        batch = self.batch_segments or (2 if torch.get_num_threads() == 1 else 5)
        out = np.empty((segments.shape[0],) + self.config.audio_shape, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(segments), batch):
                chunk = torch.as_tensor(segments[start : start + batch], dtype=torch.float32, device=self.device)
                out[start : start + batch] = self._compute(chunk).cpu().numpy()
        return out

    def _compute(self, segments: "torch.Tensor") -> "torch.Tensor":
        import torch

        cfg = self.config
        k = segments.shape[0]
        frames = segments.reshape(k * 2, -1).unfold(-1, cfg.n_fft, cfg.hop_length) * self._window
        # float32 FFTs in torch lose weak bins (up to 30% relative error 90 dB below the peak);
        # the reference's numpy FFT does not, so the transform runs in float64.
        spec = torch.fft.rfft(frames.double(), dim=-1)
        power = (spec.real.square() + spec.imag.square()).float()
        if cfg.power != 2.0:
            power = power.pow(cfg.power / 2.0)
        mel = _single_thread_matmul(power, self._mel_t)  # (2K, T, n_mels)
        log_mel = 10.0 * torch.log10(mel.clamp_min(cfg.db_amin)) - self._db_offset
        if cfg.db_top is not None:
            peak = log_mel.amax(dim=(-2, -1), keepdim=True)
            log_mel = torch.maximum(log_mel, peak - cfg.db_top)
        log_mel = log_mel.transpose(1, 2)  # (2K, n_mels, T)
        deltas = torch.matmul(log_mel.unsqueeze(1), self._deltas)  # (2K, 2, n_mels, T)
        stacked = torch.cat([log_mel.unsqueeze(1), deltas], dim=1)
        return stacked.reshape(k, 6, cfg.n_mels, cfg.n_frames)


def _single_thread_matmul(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """`a @ b` on one CPU thread: a float32 GEMM splits its sums differently on more threads
    (up to 2e-6 apart here), and the features must not depend on `--jobs` or the machine."""
    import torch

    if a.device.type != "cpu":
        return a @ b
    threads = torch.get_num_threads()
    if threads == 1:
        return a @ b
    torch.set_num_threads(1)
    try:
        return a @ b
    finally:
        torch.set_num_threads(threads)

