"""Audio features: per-second log-mel filter banks with deltas, both channels.

The definition (the contract with stage two) is :class:`~avsc_pipeline.sections.features.FeatureConfig`;
:func:`reference_features` computes it with librosa and numpy one segment and channel at a time,
as its fields state. :class:`FastLogMel` is the default implementation: the same arithmetic
batched in PyTorch (framed real FFT in float64, librosa's mel filter bank, min-max scaling,
deltas as fixed matrices), within 1e-4 of the reference on the [0, 1] scale of the default
definition (`tests/features/test_audio.py`, on generated audio and the real clips).

Under every definition the six channels are `[L, dL, ddL, R, dR, ddR]`: the left channel's
log-mel, delta and delta-delta, then the right's.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Callable, Optional

import numpy as np

from avsc_pipeline.sections.features import FeatureConfig
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
    """Features of `(K, 2, S)` segments with librosa and numpy, one segment and channel at a time.

    The independent reference of :class:`FastLogMel`: librosa's mel spectrogram and `power_to_db`
    or `log(mel + log_offset)`, min-max scaling as numpy expressions, and the deltas either by
    `librosa.feature.delta` or by the authors' regression formula written out over slices
    (:func:`regression_delta`). With `scaling: clip` the K segments are one clip, scaled together.

    Returns:
        `(K, 6, n_mels, n_frames)` float32: `[L, dL, ddL, R, dR, ddR]`.
    """
    import librosa

    _check_segments(segments, config)
    log_mel = np.stack([[_reference_log_mel(segment[ch], config) for ch in range(2)] for segment in segments])
    log_mel = _reference_scaling(log_mel, config)  # (K, 2, n_mels, stft_frames)
    out = np.empty((segments.shape[0],) + config.audio_shape, dtype=np.float32)
    half = config.delta_width // 2
    for k in range(segments.shape[0]):
        for ch in range(2):
            x = log_mel[k, ch]
            if config.delta == "librosa":
                kinds = (x, librosa.feature.delta(x, width=config.delta_width, order=1),
                         librosa.feature.delta(x, width=config.delta_width, order=2))
            else:
                d = regression_delta(x, config.delta_width)
                kinds = (x[:, 2 * half : x.shape[1] - 2 * half], d[:, half : d.shape[1] - half],
                         regression_delta(d, config.delta_width))
            out[k, 3 * ch : 3 * ch + 3] = np.stack(kinds)
    return out


def _reference_log_mel(signal: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """`(n_mels, stft_frames)` float32 log-mel of one channel of one segment, with librosa."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=signal, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
        window=config.window, center=config.center, pad_mode=config.pad_mode, power=config.power,
        n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax, htk=config.htk, norm=config.mel_norm,
    )
    if config.log == "db":
        return librosa.power_to_db(mel, ref=config.db_ref, amin=config.db_amin, top_db=config.db_top)
    return np.log(mel + config.log_offset)


def _reference_scaling(log_mel: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Min-max scaling of `(K, 2, n_mels, T)` log-mels per segment, per call (clip), or none."""
    if config.scaling == "none":
        return log_mel
    groups = [log_mel] if config.scaling == "clip" else list(log_mel)
    out = []
    for group in groups:
        low, high = group.min(), group.max()
        out.append((group - low) / (high - low) if high > low else np.zeros_like(group))
    return np.stack(out).reshape(log_mel.shape)


def regression_delta(x: np.ndarray, width: int) -> np.ndarray:
    """The authors' deltas without padding along the last axis: for `N = width // 2`,
    `d[t] = sum_n n * (x[t + n] - x[t - n]) / (2 * sum_n n ** 2)` over the frames where every
    neighbour exists (`T -> T - 2N`). For width 5: `(x[t+1] - x[t-1]) / 10 + (x[t+2] - x[t-2]) / 5`.
    """
    n, frames = width // 2, x.shape[-1]
    if frames <= 2 * n:
        raise ValueError(f"expected more than {2 * n} frames for width-{width} deltas, got {frames}")
    total = sum((i * (x[..., n + i : frames - n + i] - x[..., n - i : frames - n - i]) for i in range(1, n + 1)))
    return total / (2 * sum(i * i for i in range(1, n + 1)))


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


def regression_matrices(n_frames: int, width: int) -> np.ndarray:
    """`(3, T, T - 4N)` float64 matrices M with `X @ M[i]` the i-th kind of the stacked features
    `[x[2N:-2N], d[N:-N], dd]` of regression deltas (`N = width // 2`), X `(..., T)`."""
    n = width // 2
    first = regression_delta(np.eye(n_frames), width)  # (T, T - 2N): column j is d[j]'s weights
    second = regression_delta(np.eye(n_frames - 2 * n), width)
    crop = np.eye(n_frames)[:, 2 * n : n_frames - 2 * n]
    return np.stack([crop, first[:, n : first.shape[1] - n], first @ second])


class FastLogMel:
    """Batched PyTorch implementation of :func:`reference_features`.

    Under the dB definition the arithmetic is the one its shards were first written with
    (float32 windowing, a dense mel product), so they stay byte-identical (`compatible`). The
    other definitions window in float64 as librosa does (float32 windowing lifts weak bands 110 dB
    below a tone by 0.2%, 1.4e-4 on the [0, 1] scale) and sum only each band's nonzero filter
    weights (a sparse product: HTK filters without norm fill 1.5% of the matrix), which keeps
    them at least 4x faster than librosa on one thread (`bench/bench_audio.py`).

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
        t, width = config.stft_frames, config.delta_width
        if config.delta == "librosa":
            deltas = np.stack([delta_matrix(t, width, 1), delta_matrix(t, width, 2)])
        else:
            deltas = regression_matrices(t, width)
        self.compatible = config.log == "db"
        window_dtype = torch.float32 if self.compatible else torch.float64
        self._window = torch.as_tensor(window, dtype=window_dtype, device=self.device)
        self._mel_t = torch.as_tensor(mel.T, dtype=torch.float32, device=self.device).contiguous()
        self._mel_sparse = None if self.compatible else _sparse_rows(mel, self.device)
        self._deltas = torch.as_tensor(deltas, dtype=torch.float32, device=self.device)
        # regression: the three (T, n_frames) matrices side by side, (T, 3 * n_frames)
        self._deltas_flat = self._deltas.permute(1, 0, 2).reshape(t, -1) if config.delta == "regression" else None
        self._db_offset = 10.0 * np.log10(max(config.db_amin, config.db_ref))

    def __repr__(self) -> str:
        return f"FastLogMel(shape={self.config.audio_shape}, batch_segments={self.batch_segments})"

    def __call__(self, segments: np.ndarray) -> np.ndarray:
        """Features of `(K, 2, S)` float32 segments (one clip for `scaling: clip`) as
        `(K, 6, n_mels, n_frames)` float32."""
        import torch

        _check_segments(segments, self.config)
        batch = self.batch_segments or (2 if torch.get_num_threads() == 1 else 5)
        out = np.empty((segments.shape[0],) + self.config.audio_shape, dtype=np.float32)
        starts = range(0, len(segments), batch)
        with torch.inference_mode():
            chunks = (torch.as_tensor(segments[s : s + batch], dtype=torch.float32, device=self.device) for s in starts)
            if self.config.scaling != "clip":
                for start, chunk in zip(starts, chunks):
                    log_mel = self._scale_segments(self._log_mel(chunk))
                    self._stack(log_mel, out[start : start + batch])
                return out
            log_mels = [self._log_mel(chunk) for chunk in chunks]
            if log_mels:
                low = torch.stack([m.amin() for m in log_mels]).amin()
                high = torch.stack([m.amax() for m in log_mels]).amax()
            for start, log_mel in zip(starts, log_mels):
                self._stack(_min_max(log_mel, low, high), out[start : start + batch])
        return out

    def _log_mel(self, segments: "torch.Tensor") -> "torch.Tensor":
        """`(k, 2, S)` -> `(2k, n_mels, stft_frames)` float32 log-mel, before any scaling."""
        import torch

        cfg = self.config
        signal = segments.reshape(segments.shape[0] * 2, -1)
        if cfg.center:
            signal = _pad_centred(signal, cfg.n_fft // 2, cfg.pad_mode)
        frames = signal.unfold(-1, cfg.n_fft, cfg.hop_length)
        # The transform runs in float64: float32 loses weak bins next to loud ones (a float32
        # FFT moves the [0, 1]-scaled features of a tone in near-silence by 7e-4).
        if self.compatible:
            windowed = torch.mul(frames, self._window, out=frames.new_empty(frames.shape, dtype=torch.float64))
        else:  # float32 samples times the float64 window, as librosa
            windowed = frames.new_empty(frames.shape, dtype=torch.float64).copy_(frames).mul_(self._window)
        spec = torch.fft.rfft(windowed, dim=-1)
        power = spec.real.square().add_(spec.imag.square())  # float64 (2k, T, n_fft // 2 + 1)
        if cfg.power != 2.0:
            power = power.pow(cfg.power / 2.0)
        mel = self._mel(power)  # (2k, n_mels, T) float32
        if cfg.log == "natural":
            return torch.log(mel + cfg.log_offset)
        log_mel = 10.0 * torch.log10(mel.clamp_min(cfg.db_amin)) - self._db_offset
        if cfg.db_top is not None:
            peak = log_mel.amax(dim=(-2, -1), keepdim=True)
            log_mel = torch.maximum(log_mel, peak - cfg.db_top)
        return log_mel

    def _mel(self, power: "torch.Tensor") -> "torch.Tensor":
        """`(2k, T, n_fft // 2 + 1)` float64 power -> `(2k, n_mels, T)` float32 mel power (rounded
        to float32 first, as the reference's), on one thread (a product splits its sums
        differently on more threads, and the features must not depend on `--jobs` or the machine)."""
        import torch

        if self.compatible:
            power = power.float()
            return _on_one_thread(power.device, lambda: power @ self._mel_t).transpose(1, 2)
        rows, frames, bins = power.shape
        # (bins, frames) as the sparse product reads it: the float32 rounding and the transpose in one copy
        flat = power.new_empty((bins, rows * frames), dtype=torch.float32)
        flat.T.copy_(power.reshape(rows * frames, bins))
        mel = _on_one_thread(power.device, lambda: torch.sparse.mm(self._mel_sparse, flat))
        return mel.reshape(-1, rows, frames).permute(1, 0, 2)

    def _scale_segments(self, log_mel: "torch.Tensor") -> "torch.Tensor":
        """Per-segment min-max scaling of `(2k, n_mels, T)` (both channels of a segment together)."""
        if self.config.scaling == "none":
            return log_mel
        per_segment = log_mel.unflatten(0, (-1, 2))  # (k, 2, n_mels, T), a view in any layout
        low = per_segment.amin(dim=(1, 2, 3), keepdim=True)
        high = per_segment.amax(dim=(1, 2, 3), keepdim=True)
        return _min_max(per_segment, low, high).flatten(0, 1)

    def _stack(self, log_mel: "torch.Tensor", out: np.ndarray) -> None:
        """`(2k, n_mels, T)` log-mel and its deltas into `out`, `(k, 6, n_mels, n_frames)` float32."""
        import torch

        cfg = self.config
        k = log_mel.shape[0] // 2
        if cfg.delta == "regression":
            # [x[2N:-2N], d[N:-N], dd] in one product over the band-major rows (the sparse mel
            # product's layout), written into `out` in the one copy that reorders them
            rows = log_mel.transpose(0, 1).reshape(-1, log_mel.shape[-1])  # (n_mels * 2k, T)
            stacked = (rows @ self._deltas_flat).view(cfg.n_mels, 2 * k, 3, cfg.n_frames)
            torch.from_numpy(out).view(2 * k, 3, cfg.n_mels, cfg.n_frames).copy_(stacked.permute(1, 2, 0, 3))
            return
        deltas = torch.matmul(log_mel.unsqueeze(1), self._deltas)  # (2k, 2, n_mels, T)
        stacked = torch.cat([log_mel.unsqueeze(1), deltas], dim=1)
        out[...] = stacked.reshape(k, 6, cfg.n_mels, cfg.n_frames).cpu().numpy()


def _pad_centred(signal: "torch.Tensor", half: int, mode: str) -> "torch.Tensor":
    """`(N, S)` -> `(N, S + 2 * half)` padded as librosa pads centred frames: `reflect` (the edge
    sample not repeated, as `np.pad`) or `constant` (zeros). One concatenation: measured 4x
    faster than `torch.nn.functional.pad`'s reflection kernel."""
    import torch

    if mode == "reflect":
        left, right = signal[:, 1 : half + 1].flip(-1), signal[:, -half - 1 : -1].flip(-1)
    else:
        left = right = signal.new_zeros((signal.shape[0], half))
    return torch.cat([left, signal, right], dim=-1)


def _min_max(x: "torch.Tensor", low: "torch.Tensor", high: "torch.Tensor") -> "torch.Tensor":
    """`(x - low) / (high - low)`, and zeros where `high == low` (a constant log-mel: silence)."""
    import torch

    span = high - low
    return (x - low) / torch.where(span > 0, span, torch.ones_like(span))


def _sparse_rows(matrix: np.ndarray, device: "torch.device") -> "torch.Tensor":
    """`(R, C)` float32 CSR tensor of a mostly-zero matrix."""
    import torch

    with warnings.catch_warnings():  # "sparse CSR support is in beta": CPU and CUDA products are stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.as_tensor(matrix, dtype=torch.float32, device=device).to_sparse_csr()


def _on_one_thread(device: "torch.device", product: Callable[[], "torch.Tensor"]) -> "torch.Tensor":
    """`product()` on one CPU thread: a float32 product splits its sums differently on more
    threads (up to 2e-6 apart here), and the features must not depend on `--jobs` or the machine."""
    import torch

    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        return product()
    torch.set_num_threads(1)
    try:
        return product()
    finally:
        torch.set_num_threads(threads)

