"""Offline audio augmentation: four waveform operations, their typed config and keyed draws.

The paper enlarges the audio training data before training with (i) pitch shifting, (ii) speed
changing, (iii) Gaussian noise and (iv) mixing two recordings of the same scene class. Each
operation maps a `(C, n)` float32 waveform at the feature sample rate to a new waveform:

==========  ==================================================================================
`pitch`     shift by `semitones` (uniform in `pitch_semitones`), duration kept: librosa's phase
            vocoder time stretch by `2 ** (-semitones / 12)`, then soxr resampling back to `n`
            samples (:func:`pitch_shift`, the same algorithm as `librosa.effects.pitch_shift`).
`speed`     play `speed` times faster (uniform in `speed_factor`): pitch and tempo change
            together; `round(n / speed)` samples (:func:`change_speed`, soxr resampling).
`noise`     white Gaussian noise at `snr_db` (uniform in `noise_snr_db`), the SNR measured on the
            whole clip, both channels: noise power = mean(x ** 2) / 10 ** (snr_db / 10) exactly.
`mix`       `x + gain * y` for another clip `y` of the same class (never the clip itself),
            `gain` uniform in `mix_gain`; `y` cut or zero-padded to `n` samples. No normalization:
            features are computed from float samples, so nothing clips.
==========  ==================================================================================

Every parameter is drawn from a generator keyed by `(seed, clip id, operation, copy)` and rounded
to float32 (the dtype it is stored in), so the same seed gives the same parameters and bytes for a
clip regardless of worker count, order or `--part`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from avsc_pipeline.config import check_choice, check_int, check_range
from avsc_pipeline.features.pvoc import STFTAnalysis, stretch
from avsc_pipeline.storage.shards import AUGMENT_VARIANTS

RESAMPLE_QUALITIES = ("LQ", "MQ", "HQ", "VHQ")


class AugmentError(ValueError):
    """An operation that cannot apply to a clip (e.g. noise at an SNR on digital silence)."""


@dataclass(frozen=True)
class OfflineAugmentConfig:
    """Which operations to apply, how often, and the ranges their parameters are drawn from.

    Attributes:
        ops: operations, each writing its own rows (`variant` = the operation's name).
        copies: augmented versions per clip and operation, each with its own draw.
        seed: seed of every draw (non-negative).
        pitch_semitones: `(low, high)` of the uniform pitch shift, in semitones.
        speed_factor: `(low, high)` of the uniform speed factor (> 1 is faster and higher).
        noise_snr_db: `(low, high)` of the uniform signal-to-noise ratio, in dB.
        mix_gain: `(low, high)` of the uniform gain of the partner clip.
        n_fft: FFT size of the pitch shift's phase vocoder (librosa's default).
        hop_length: hop of the phase vocoder (librosa's default, `n_fft // 4`).
        resample_quality: soxr quality of the resampling steps (`HQ` is librosa's default).
        dsp: the signal-processing implementation, `fast` (this module) or `librosa` (the
            librosa effects, for comparison).
    """

    ops: Tuple[str, ...] = AUGMENT_VARIANTS
    copies: int = 1
    seed: int = 0
    pitch_semitones: Tuple[float, float] = (-2.0, 2.0)
    speed_factor: Tuple[float, float] = (0.9, 1.1)
    noise_snr_db: Tuple[float, float] = (10.0, 40.0)
    mix_gain: Tuple[float, float] = (0.3, 0.7)
    n_fft: int = 2048
    hop_length: int = 512
    resample_quality: str = "HQ"
    dsp: str = "fast"

    def __post_init__(self) -> None:
        unknown = [op for op in self.ops if op not in AUGMENT_VARIANTS]
        if not self.ops or unknown or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"expected distinct ops from {list(AUGMENT_VARIANTS)}, got {list(self.ops)}")
        check_int(self, ("copies", "n_fft", "hop_length"), minimum=1)
        check_int(self, ("seed",), minimum=0)
        check_range(self, "pitch_semitones", -12.0, 12.0)
        check_range(self, "speed_factor", 0.25, 4.0)
        check_range(self, "noise_snr_db", -20.0, 120.0)
        check_range(self, "mix_gain", 0.0, 10.0)
        if self.n_fft % 2 or self.n_fft % self.hop_length:
            raise ValueError(f"expected an even n_fft that hop_length divides, got {self.n_fft} and {self.hop_length}")
        check_choice(self, "resample_quality", RESAMPLE_QUALITIES)
        check_choice(self, "dsp", sorted(DSP_IMPLEMENTATIONS))


@dataclass(frozen=True)
class AugmentParams:
    """The drawn parameters of one augmented version of a clip (NaN / "" where not applicable).

    Attributes:
        op: the operation.
        copy: which copy (0-based) of this operation on this clip.
        semitones: pitch shift (`pitch`).
        speed: speed factor (`speed`).
        snr_db: signal-to-noise ratio in dB (`noise`).
        gain: gain of the partner (`mix`).
        partner: the partner clip's id (`mix`).
    """

    op: str
    copy: int
    semitones: float = math.nan
    speed: float = math.nan
    snr_db: float = math.nan
    gain: float = math.nan
    partner: str = ""


def variant_rngs(seed: int, clip_id: str, op: str, copy: int) -> Tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators keyed by `(seed, clip_id, op, copy)`: parameters, then signal."""
    digest = hashlib.sha256(f"{clip_id}\0{op}".encode("utf-8")).digest()
    words = np.frombuffer(digest[:16], dtype="<u4").tolist()
    params, signal = np.random.SeedSequence([seed, copy, *words]).spawn(2)
    return np.random.default_rng(params), np.random.default_rng(signal)


def _uniform(rng: np.random.Generator, bounds: Tuple[float, float]) -> float:
    return float(np.float32(rng.uniform(bounds[0], bounds[1])))


def draw_params(config: OfflineAugmentConfig, clip_id: str, op: str, copy: int,
                partners: Sequence[str] = ()) -> AugmentParams:
    """The parameters of copy `copy` of operation `op` on a clip (deterministic for the key).

    Args:
        config: ranges and seed.
        clip_id: the clip.
        op: one of :data:`~avsc_pipeline.storage.shards.AUGMENT_VARIANTS`.
        copy: 0-based copy number.
        partners: for `mix`, the ids of the clips of the same class (the clip itself is ignored).

    Raises:
        AugmentError: `mix` without another clip of the same class.
    """
    if op not in AUGMENT_VARIANTS:
        raise ValueError(f"expected op in {list(AUGMENT_VARIANTS)}, got {op!r}")
    rng, _ = variant_rngs(config.seed, clip_id, op, copy)
    if op == "pitch":
        return AugmentParams(op, copy, semitones=_uniform(rng, config.pitch_semitones))
    if op == "speed":
        return AugmentParams(op, copy, speed=_uniform(rng, config.speed_factor))
    if op == "noise":
        return AugmentParams(op, copy, snr_db=_uniform(rng, config.noise_snr_db))
    others = sorted(set(partners) - {clip_id})
    if not others:
        raise AugmentError(f"no other clip of the same class to mix {clip_id} with")
    partner = others[int(rng.integers(len(others)))]
    return AugmentParams(op, copy, gain=_uniform(rng, config.mix_gain), partner=partner)


def output_samples(params: AugmentParams, n_samples: int) -> int:
    """Length of the augmented waveform of an `n_samples` clip (only `speed` changes it)."""
    return int(round(n_samples / params.speed)) if params.op == "speed" else n_samples


def _check_audio(audio: np.ndarray) -> None:
    if not isinstance(audio, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(audio).__name__}")
    if audio.ndim != 2 or audio.dtype != np.float32:
        raise ValueError(f"expected (channels, samples) float32 audio, got {audio.shape} {audio.dtype}")


def _fix_length(audio: np.ndarray, size: int) -> np.ndarray:
    if audio.shape[-1] >= size:
        return np.ascontiguousarray(audio[..., :size])
    return np.pad(audio, ((0, 0), (0, size - audio.shape[-1])))


def _resample(audio: np.ndarray, in_rate: float, out_rate: float, size: int, quality: str) -> np.ndarray:
    import soxr

    out = soxr.resample(audio.T, in_rate, out_rate, quality=quality)  # (frames, C) float32
    return _fix_length(np.ascontiguousarray(out.T), size)


def pitch_shift(audio: np.ndarray, sr: int, semitones: float, *, n_fft: int = 2048, hop_length: int = 512,
                quality: str = "HQ", analysis: Optional[STFTAnalysis] = None) -> np.ndarray:
    """Shift the pitch by `semitones`, keeping the duration (librosa.effects.pitch_shift's method).

    Args:
        audio: `(C, n)` float32 waveform.
        sr: its sample rate.
        semitones: the shift; +12 doubles every frequency.
        n_fft: FFT size of the phase vocoder.
        hop_length: its hop.
        quality: soxr quality of the resampling.
        analysis: the STFT of `audio` from an earlier call, reused (e.g. across copies).

    Returns:
        `(C, n)` float32.
    """
    _check_audio(audio)
    rate = 2.0 ** (-float(semitones) / 12.0)
    if analysis is None:
        analysis = STFTAnalysis(audio, n_fft, hop_length)
    stretched = stretch(analysis, rate, int(round(audio.shape[-1] / rate)))
    return _resample(stretched, sr / rate, sr, audio.shape[-1], quality)


def change_speed(audio: np.ndarray, sr: int, factor: float, *, quality: str = "HQ") -> np.ndarray:
    """Play `factor` times faster: every frequency times `factor`, duration divided by it.

    Returns:
        `(C, round(n / factor))` float32.
    """
    _check_audio(audio)
    if not factor > 0:
        raise ValueError(f"expected a positive speed factor, got {factor}")
    return _resample(audio, sr * float(factor), sr, int(round(audio.shape[-1] / factor)), quality)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise whose power is the clip's mean power over `10 ** (snr_db / 10)`.

    Both powers are means over the whole clip and both channels; the drawn noise is rescaled to
    its target power exactly, so the measured SNR is `snr_db` up to float rounding.

    Raises:
        AugmentError: the clip is digitally silent (no SNR is defined).
    """
    _check_audio(audio)
    power = float(np.mean(np.square(audio, dtype=np.float64)))
    if power == 0.0:
        raise AugmentError("digitally silent clip: noise at an SNR is undefined")
    noise = rng.standard_normal(audio.shape, dtype=np.float32)
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    scale = math.sqrt(power / 10.0 ** (float(snr_db) / 10.0) / noise_power)
    noise *= np.float32(scale)
    return audio + noise


def mix(audio: np.ndarray, partner: np.ndarray, gain: float) -> np.ndarray:
    """`audio + gain * partner` in float32, the partner cut or zero-padded to `audio`'s length."""
    _check_audio(audio)
    _check_audio(partner)
    if partner.shape[0] != audio.shape[0]:
        raise ValueError(f"expected a partner with {audio.shape[0]} channels, got {partner.shape[0]}")
    return audio + np.float32(gain) * _fix_length(partner, audio.shape[-1])


def _librosa_pitch_shift(audio: np.ndarray, sr: int, semitones: float, *, n_fft: int = 2048,
                         hop_length: int = 512, quality: str = "HQ", analysis: Any = None) -> np.ndarray:
    import librosa

    out = librosa.effects.pitch_shift(audio, sr=sr, n_steps=float(semitones), n_fft=n_fft,
                                      hop_length=hop_length, res_type=f"soxr_{quality.lower()}")
    return np.ascontiguousarray(out, dtype=np.float32)


def _librosa_change_speed(audio: np.ndarray, sr: int, factor: float, *, quality: str = "HQ") -> np.ndarray:
    import librosa

    out = librosa.resample(audio, orig_sr=sr, target_sr=sr / float(factor), res_type=f"soxr_{quality.lower()}")
    return _fix_length(np.asarray(out, dtype=np.float32), int(round(audio.shape[-1] / factor)))


@dataclass(frozen=True)
class DspImplementation:
    """The implementations of the two operations that have a faster equivalent."""

    pitch_shift: Callable[..., np.ndarray]
    change_speed: Callable[..., np.ndarray]


DSP_IMPLEMENTATIONS: Dict[str, DspImplementation] = {
    "fast": DspImplementation(pitch_shift, change_speed),
    "librosa": DspImplementation(_librosa_pitch_shift, _librosa_change_speed),
}


class Augmenter:
    """Applies drawn parameters to one clip, reusing the clip's STFT across pitch copies.

    Args:
        audio: `(C, n)` float32 waveform of the clip.
        sr: its sample rate.
        clip_id: its id (keys the noise generator).
        config: the augmentation config.
    """

    def __init__(self, audio: np.ndarray, sr: int, clip_id: str, config: OfflineAugmentConfig) -> None:
        _check_audio(audio)
        self.audio = audio
        self.sr = sr
        self.clip_id = clip_id
        self.config = config
        self._analysis: Optional[STFTAnalysis] = None

    def __call__(self, params: AugmentParams, partner: Optional[np.ndarray] = None) -> np.ndarray:
        """The augmented waveform, `(C, output_samples(params, n))` float32.

        Raises:
            AugmentError: the operation cannot apply to this clip.
            ValueError: `mix` without partner audio.
        """
        cfg, dsp = self.config, DSP_IMPLEMENTATIONS[self.config.dsp]
        if params.op == "pitch":
            if cfg.dsp == "fast" and self._analysis is None:
                self._analysis = STFTAnalysis(self.audio, cfg.n_fft, cfg.hop_length)
            return dsp.pitch_shift(self.audio, self.sr, params.semitones, n_fft=cfg.n_fft,
                                       hop_length=cfg.hop_length, quality=cfg.resample_quality,
                                       analysis=self._analysis)
        if params.op == "speed":
            return dsp.change_speed(self.audio, self.sr, params.speed, quality=cfg.resample_quality)
        if params.op == "noise":
            _, rng = variant_rngs(cfg.seed, self.clip_id, params.op, params.copy)
            return add_noise(self.audio, params.snr_db, rng)
        if params.op == "mix":
            if partner is None:
                raise ValueError(f"expected partner audio for mix with {params.partner!r}, got None")
            return mix(self.audio, partner, params.gain)
        raise ValueError(f"expected op in {list(AUGMENT_VARIANTS)}, got {params.op!r}")
