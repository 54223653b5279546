"""A vectorized phase vocoder: librosa's `time_stretch` without its per-frame Python loop.

`librosa.effects.time_stretch` is `stft -> phase_vocoder -> istft` with a loop over output frames
that accumulates phase in the input's float precision. This module computes the same thing on a
time-major `(frames, channels, bins)` spectrum, both channels in one transform:

- the phase advance between analysis frames `t` and `t + 1` is the unit phasor of
  `D[t + 1] * conj(D[t])`, computed once per analysis frame (and reused across stretch rates,
  e.g. across copies of a clip);
- the output phase is the running product of those phasors (a row-wise loop of vectorized
  complex multiplications), which wraps itself, so no large phase angles accumulate.

Magnitudes are interpolated linearly between frames exactly as librosa does. On a 10 s clip the
result is within 2e-5 (relative RMS) of `librosa.effects.time_stretch` run in float64; librosa
run on the float32 input differs from its own float64 result by 1-2 %, because its phase
accumulator grows to ~1e6 rad in float32.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

_TINY = np.float32(1e-30)
_WINDOWS: Dict[int, np.ndarray] = {}


def hann_window(n_fft: int) -> np.ndarray:
    """The periodic Hann window librosa's STFT uses, float32 `(n_fft,)` (cached per process)."""
    if n_fft not in _WINDOWS:
        k = np.arange(n_fft, dtype=np.float64)
        _WINDOWS[n_fft] = (0.5 - 0.5 * np.cos(2.0 * np.pi * k / n_fft)).astype(np.float32)
    return _WINDOWS[n_fft]


class STFTAnalysis:
    """The centred, zero-padded STFT of a `(C, n)` float32 waveform, time-major.

    Attributes:
        magnitude: `(T + 2, C, n_fft // 2 + 1)` float32, two zero frames appended.
        rotation: `(T, C, n_fft // 2 + 1)` complex64, the unit phase advance from frame `t` to
            `t + 1` (to the first zero frame for the last `t`).
        start: `(C, n_fft // 2 + 1)` complex64 unit phasors of frame 0.
    """

    def __init__(self, audio: np.ndarray, n_fft: int = 2048, hop_length: int = 512) -> None:
        import scipy.fft

        if audio.ndim != 2 or audio.dtype != np.float32:
            raise ValueError(f"expected (channels, samples) float32 audio, got {audio.shape} {audio.dtype}")
        if n_fft % 2 or hop_length < 1 or n_fft % hop_length:
            raise ValueError(f"expected an even n_fft that hop_length divides, got {n_fft} and {hop_length}")
        self.n_fft, self.hop_length = n_fft, hop_length
        channels, n = audio.shape
        padded = np.zeros((channels, n + n_fft), dtype=np.float32)
        padded[:, n_fft // 2 : n_fft // 2 + n] = audio
        frames = np.lib.stride_tricks.as_strided(
            padded, (1 + n // hop_length, channels, n_fft), (hop_length * 4, padded.strides[0], 4)
        )
        spectrum = scipy.fft.rfft(frames * hann_window(n_fft), axis=-1)  # (T, C, F) complex64
        self.frames = spectrum.shape[0]
        self.magnitude = np.zeros((self.frames + 2,) + spectrum.shape[1:], dtype=np.float32)
        np.abs(spectrum, out=self.magnitude[: self.frames])
        unit = np.empty((self.frames + 1,) + spectrum.shape[1:], dtype=np.complex64)
        unit[self.frames] = 1.0  # the zero frame after the end has angle 0
        inverse = np.reciprocal(np.maximum(self.magnitude[: self.frames], _TINY))
        np.multiply(spectrum, inverse, out=unit[: self.frames])
        silent = self.magnitude[: self.frames] == 0
        if silent.any():  # np.angle(0) is 0: a silent bin's phasor is 1, as in librosa
            unit[: self.frames][silent] = 1.0
        self.start = unit[0].copy()
        self.rotation = np.conjugate(unit[:-1])
        self.rotation *= unit[1:]


def stretch(analysis: STFTAnalysis, rate: float, length: int) -> np.ndarray:
    """Time-stretch the analysed waveform by `rate` (> 1 is faster) to `length` samples.

    Args:
        analysis: the waveform's STFT.
        rate: speed-up factor, as in `librosa.effects.time_stretch`.
        length: output samples (librosa uses `round(n / rate)`).

    Returns:
        `(C, length)` float32.
    """
    if not rate > 0:
        raise ValueError(f"expected a positive stretch rate, got {rate}")
    steps = np.arange(0, analysis.frames, rate, dtype=np.float64)
    index = steps.astype(np.int64)
    alpha = (steps - index).astype(np.float32)[:, None, None]
    low, high = analysis.magnitude[index], analysis.magnitude[index + 1]
    high -= low
    high *= alpha
    low += high  # (1 - alpha) * |D[t]| + alpha * |D[t + 1]|
    phase = np.empty(low.shape, dtype=np.complex64)
    phase[0] = analysis.start
    phase[1:] = analysis.rotation[index[:-1]]
    for s in range(1, len(phase)):  # row-wise running product: each step is one vector multiply
        np.multiply(phase[s - 1], phase[s], out=phase[s])
    np.multiply(phase, low, out=phase)
    return overlap_add(phase, analysis.n_fft, analysis.hop_length, length)


def overlap_add(spectrum: np.ndarray, n_fft: int, hop_length: int, length: int) -> np.ndarray:
    """Inverse of the centred STFT (librosa's `istft` with `length`) of a time-major spectrum.

    Args:
        spectrum: `(S, C, n_fft // 2 + 1)` complex64.
        n_fft: FFT size.
        hop_length: hop; must divide `n_fft`.
        length: output samples.

    Returns:
        `(C, length)` float32.
    """
    import scipy.fft

    if n_fft % hop_length:
        raise ValueError(f"expected hop_length to divide n_fft, got {hop_length} and {n_fft}")
    n_steps, channels, _ = spectrum.shape
    frames = scipy.fft.irfft(spectrum, n=n_fft, axis=-1)
    frames *= hann_window(n_fft)
    overlap = n_fft // hop_length
    blocks = frames.reshape(n_steps, channels, overlap, hop_length).transpose(1, 0, 2, 3)
    out = np.zeros((channels, n_steps + overlap - 1, hop_length), dtype=np.float32)
    for j in range(overlap):
        out[:, j : j + n_steps] += blocks[:, :, j]
    start = n_fft // 2
    signal = out.reshape(channels, -1)[:, start : start + length]
    norm = _window_sumsquare(n_steps, n_fft, hop_length)[start : start + signal.shape[1]]
    inverse = np.where(norm > np.finfo(np.float32).tiny, np.float32(1.0) / np.maximum(norm, _TINY), np.float32(1.0))
    signal = signal * inverse.astype(np.float32)
    if signal.shape[1] < length:
        signal = np.pad(signal, ((0, 0), (0, length - signal.shape[1])))
    return signal


def _window_sumsquare(n_steps: int, n_fft: int, hop_length: int) -> np.ndarray:
    overlap = n_fft // hop_length
    squares = (hann_window(n_fft) ** 2).reshape(overlap, hop_length)
    norm = np.zeros((n_steps + overlap - 1, hop_length), dtype=np.float32)
    for j in range(overlap):
        norm[j : j + n_steps] += squares[j]
    return norm.reshape(-1)


def time_stretch(audio: np.ndarray, rate: float, n_fft: int = 2048, hop_length: int = 512) -> np.ndarray:
    """`librosa.effects.time_stretch(audio, rate=rate)` for `(C, n)` float32 audio, vectorized."""
    return stretch(STFTAnalysis(audio, n_fft, hop_length), rate, int(round(audio.shape[-1] / rate)))

