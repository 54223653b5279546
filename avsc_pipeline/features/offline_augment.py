"""Offline audio augmentation: four waveform operations and their keyed parameter draws.

The paper enlarges the audio training data before training with (i) pitch shifting, (ii) speed
changing, (iii) Gaussian noise and (iv) mixing two recordings of the same scene class, with the
authors' values as the defaults of :class:`~avsc_pipeline.sections.features.OfflineAugmentConfig`
(`offline_augment:`). Each operation maps a `(C, n)` float32 waveform at the feature sample rate
to a new waveform, every channel alike:

==========  ==================================================================================
`pitch`     shift by `semitones` (uniform in `pitch_semitones`), duration kept: librosa's phase
            vocoder time stretch by `2 ** (-semitones / 12)`, then soxr resampling back to `n`
            samples (:func:`pitch_shift`, the same algorithm as `librosa.effects.pitch_shift`).
`speed`     `speed_method: stretch` (default): tempo times `stretch` (uniform in `speed_factor`),
            pitch kept, by the phase vocoder of `librosa.effects.time_stretch`; a result shorter
            than the clip is repeated end to end and everything is cut to `n` samples
            (:func:`change_tempo`). `resample`: pitch and tempo times `speed` together,
            `round(n / speed)` samples (:func:`change_speed`, soxr resampling).
`noise`     `noise: fixed` (default): `x + noise_std * N(0, 1)` on every non-zero sample, zeros
            kept (:func:`add_fixed_noise`). `snr`: white noise at `snr_db` (uniform in
            `noise_snr_db`), noise power = mean(x ** 2) / 10 ** (snr_db / 10) over the whole clip
            and both channels exactly (:func:`add_noise`). Noise is drawn for each channel.
`mix`       with `y` another clip of the same class (never the clip itself), cut or zero-padded
            to `n` samples: `mix: two_gains` (default) `clip_gain * x + gain * y`, both gains
            uniform in `mix_gain`; `one_gain`: `x + gain * y` (`clip_gain` 1). No normalization:
            features are computed from float samples, so nothing clips.
==========  ==================================================================================

Every parameter is drawn from a generator keyed by `(seed, clip id, operation, copy)` and rounded
to float32 (the dtype it is stored in), so the same seed gives the same parameters and bytes for a
clip regardless of worker count, order or `--part`. The earlier variants (`resample`, `snr`,
`one_gain`) draw exactly what they drew before the authors' variants were added.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

# OfflineAugmentConfig lives with FeatureConfig (the recipe's sections); imported here for its users.
from avsc_pipeline.sections.features import OfflineAugmentConfig
from avsc_pipeline.features.pvoc import STFTAnalysis, stretch
from avsc_pipeline.storage.shards import AUGMENT_VARIANTS


class AugmentError(ValueError):
    """An operation that cannot apply to a clip (e.g. noise at an SNR on digital silence)."""


@dataclass(frozen=True)
class AugmentParams:
    """The drawn parameters of one augmented version of a clip (NaN / "" where not applicable).

    Attributes:
        op: the operation.
        copy: which copy (0-based) of this operation on this clip.
        semitones: pitch shift (`pitch`).
        speed: speed factor (`speed` by resampling).
        stretch: time-stretch rate (`speed` by time stretching; > 1 is faster).
        snr_db: signal-to-noise ratio in dB (`noise` at an SNR).
        gain: gain of the partner (`mix`).
        clip_gain: gain of the clip itself (`mix`; 1 with one gain).
        partner: the partner clip's id (`mix`).
    """

    op: str
    copy: int
    semitones: float = math.nan
    speed: float = math.nan
    stretch: float = math.nan
    snr_db: float = math.nan
    gain: float = math.nan
    clip_gain: float = math.nan
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

    For `mix` the partner is drawn first, then its gain, then (two gains) the clip's own gain, so
    the earlier variants draw what they drew before.

    Args:
        config: ranges, variants and seed.
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
        value = _uniform(rng, config.speed_factor)
        if config.speed_method == "stretch":
            return AugmentParams(op, copy, stretch=value)
        return AugmentParams(op, copy, speed=value)
    if op == "noise":
        if config.noise == "fixed":
            return AugmentParams(op, copy)  # only the noise signal is drawn (from the second generator)
        return AugmentParams(op, copy, snr_db=_uniform(rng, config.noise_snr_db))
    others = sorted(set(partners) - {clip_id})
    if not others:
        raise AugmentError(f"no other clip of the same class to mix {clip_id} with")
    partner = others[int(rng.integers(len(others)))]
    gain = _uniform(rng, config.mix_gain)
    clip_gain = _uniform(rng, config.mix_gain) if config.mix == "two_gains" else 1.0
    return AugmentParams(op, copy, gain=gain, clip_gain=clip_gain, partner=partner)


def output_samples(params: AugmentParams, n_samples: int) -> int:
    """Length of the augmented waveform of an `n_samples` clip (only resampling speed changes it)."""
    return int(round(n_samples / params.speed)) if params.op == "speed" and not math.isnan(params.speed) else n_samples


def _check_audio(audio: np.ndarray) -> None:
    if not isinstance(audio, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(audio).__name__}")
    if audio.ndim != 2 or audio.dtype != np.float32:
        raise ValueError(f"expected (channels, samples) float32 audio, got {audio.shape} {audio.dtype}")


def fix_length(audio: np.ndarray, size: int) -> np.ndarray:
    if audio.shape[-1] >= size:
        return np.ascontiguousarray(audio[..., :size])
    return np.pad(audio, ((0, 0), (0, size - audio.shape[-1])))


def repeat_to_length(audio: np.ndarray, size: int) -> np.ndarray:
    """`(C, m)` audio repeated end to end as often as needed, then cut to `(C, size)`."""
    if audio.shape[-1] == 0:
        raise ValueError(f"expected audio with samples to repeat, got shape {audio.shape}")
    reps = -(-size // audio.shape[-1])
    return np.ascontiguousarray(np.tile(audio, (1, reps))[:, :size])


def _resample(audio: np.ndarray, in_rate: float, out_rate: float, size: int, quality: str) -> np.ndarray:
    import soxr

    out = soxr.resample(audio.T, in_rate, out_rate, quality=quality)  # (frames, C) float32
    return fix_length(np.ascontiguousarray(out.T), size)


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


def change_tempo(audio: np.ndarray, rate: float, *, n_fft: int = 2048, hop_length: int = 512,
                 analysis: Optional[STFTAnalysis] = None) -> np.ndarray:
    """Play `rate` times faster with the pitch kept (`librosa.effects.time_stretch`'s phase
    vocoder), then repeat a shorter result end to end and cut to the clip's length (the authors'
    speed change).

    Args:
        audio: `(C, n)` float32 waveform.
        rate: tempo factor (> 1 is faster).
        n_fft: FFT size of the phase vocoder.
        hop_length: its hop.
        analysis: the STFT of `audio` from an earlier call, reused (e.g. with the pitch shift).

    Returns:
        `(C, n)` float32.
    """
    _check_audio(audio)
    if not rate > 0:
        raise ValueError(f"expected a positive stretch rate, got {rate}")
    if analysis is None:
        analysis = STFTAnalysis(audio, n_fft, hop_length)
    stretched = stretch(analysis, float(rate), int(round(audio.shape[-1] / rate)))
    return repeat_to_length(stretched, audio.shape[-1])


def change_speed(audio: np.ndarray, sr: int, factor: float, *, quality: str = "HQ") -> np.ndarray:
    """Play `factor` times faster: every frequency times `factor`, duration divided by it.

    Returns:
        `(C, round(n / factor))` float32.
    """
    _check_audio(audio)
    if not factor > 0:
        raise ValueError(f"expected a positive speed factor, got {factor}")
    return _resample(audio, sr * float(factor), sr, int(round(audio.shape[-1] / factor)), quality)


def add_fixed_noise(audio: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """`x + std * N(0, 1)` on every non-zero sample (float32, independent per channel); a zero
    sample stays zero, so digital silence stays silent."""
    _check_audio(audio)
    noise = rng.standard_normal(audio.shape, dtype=np.float32)
    return np.where(audio != 0, audio + np.float32(std) * noise, audio)


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


def mix(audio: np.ndarray, partner: np.ndarray, gain: float, clip_gain: float = 1.0) -> np.ndarray:
    """`clip_gain * audio + gain * partner` in float32, the partner cut or zero-padded to
    `audio`'s length."""
    _check_audio(audio)
    _check_audio(partner)
    if partner.shape[0] != audio.shape[0]:
        raise ValueError(f"expected a partner with {audio.shape[0]} channels, got {partner.shape[0]}")
    own = audio if clip_gain == 1.0 else np.float32(clip_gain) * audio
    return own + np.float32(gain) * fix_length(partner, audio.shape[-1])


@dataclass(frozen=True)
class DspImplementation:
    """The implementations of the operations that have a faster equivalent.

    `analysis` says whether they take the clip's phase-vocoder analysis (:class:`STFTAnalysis`),
    made once per clip. The package uses :data:`FAST_DSP`; the librosa effects, the reference
    the tests and benchmarks compare with, are :func:`avsc_pipeline.testing.librosa_dsp`.
    """

    pitch_shift: Callable[..., np.ndarray]
    change_tempo: Callable[..., np.ndarray]
    change_speed: Callable[..., np.ndarray]
    analysis: bool = True


#: This package's phase vocoder and soxr resampling.
FAST_DSP = DspImplementation(pitch_shift, change_tempo, change_speed)


class Augmenter:
    """Applies drawn parameters to one clip, reusing the clip's STFT across pitch and tempo copies.

    Args:
        audio: `(C, n)` float32 waveform of the clip.
        sr: its sample rate.
        clip_id: its id (keys the noise generator).
        config: the augmentation config.
        dsp: the signal-processing implementation (the tests pass librosa's for comparison).
    """

    def __init__(self, audio: np.ndarray, sr: int, clip_id: str, config: OfflineAugmentConfig,
                 dsp: DspImplementation = FAST_DSP) -> None:
        _check_audio(audio)
        self.audio = audio
        self.sr = sr
        self.clip_id = clip_id
        self.config = config
        self.dsp = dsp
        self._analysis: Optional[STFTAnalysis] = None

    def __call__(self, params: AugmentParams, partner: Optional[np.ndarray] = None) -> np.ndarray:
        """The augmented waveform, `(C, output_samples(params, n))` float32.

        Raises:
            AugmentError: the operation cannot apply to this clip.
            ValueError: `mix` without partner audio.
        """
        cfg, dsp = self.config, self.dsp
        if params.op == "pitch":
            return dsp.pitch_shift(self.audio, self.sr, params.semitones, n_fft=cfg.n_fft,
                                   hop_length=cfg.hop_length, quality=cfg.resample_quality,
                                   analysis=self._stft())
        if params.op == "speed" and cfg.speed_method == "stretch":
            return dsp.change_tempo(self.audio, params.stretch, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                    analysis=self._stft())
        if params.op == "speed":
            return dsp.change_speed(self.audio, self.sr, params.speed, quality=cfg.resample_quality)
        if params.op == "noise":
            _, rng = variant_rngs(cfg.seed, self.clip_id, params.op, params.copy)
            if cfg.noise == "fixed":
                return add_fixed_noise(self.audio, cfg.noise_std, rng)
            return add_noise(self.audio, params.snr_db, rng)
        if params.op == "mix":
            if partner is None:
                raise ValueError(f"expected partner audio for mix with {params.partner!r}, got None")
            return mix(self.audio, partner, params.gain, params.clip_gain)
        raise ValueError(f"expected op in {list(AUGMENT_VARIANTS)}, got {params.op!r}")

    def _stft(self) -> Optional[STFTAnalysis]:
        """The clip's phase-vocoder analysis, made once (None for the librosa effects)."""
        if not self.dsp.analysis:
            return None
        if self._analysis is None:
            self._analysis = STFTAnalysis(self.audio, self.config.n_fft, self.config.hop_length)
        return self._analysis
