"""Stage one's two sections: `features:` (:class:`FeatureConfig`) and `offline_augment:`
(:class:`OfflineAugmentConfig`).

The defaults are the authors' definitions (Hu et al.'s public code, which the paper's audio side
was built with; see the README's "Feature definition"). The definition this package used before
them stays one file away: `configs/features/librosa-db.yaml` and
`configs/offline_augment/resample-snr.yaml`.

A section that leaves a key out takes today's default (the authors' definition). Shards and
checkpoints written before a field existed are migrated by version where they are read
(`storage.shards`, `models.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from avsc_pipeline.config import check_choice, check_int, check_range, from_dict
from avsc_pipeline.storage.shards import AUGMENT_VARIANTS

if TYPE_CHECKING:
    import numpy as np

PAD_MODES = ("reflect", "constant")
LOG_KINDS = ("natural", "db")
SCALINGS = ("segment", "clip", "none")
DELTA_KINDS = ("regression", "librosa")
#: What a shard stores per segment: the log-mel features, or the resampled waveform (for an
#: extractor with its own front end, computed on the training device: PANNs' CNN14).
AUDIO_KINDS = ("logmel", "waveform")
#: PANNs' log-mel (Kong et al.'s torchlibrosa front end of CNN14): a 1024-point Hann STFT with
#: hop 320, centred with reflect padding, 64 Slaney mel bands from 50 to 14000 Hz, power to dB
#: (ref 1.0, amin 1e-10, no top_db), at the release's 32 kHz. As data here, because the on-device
#: front end (`dataio.front_end`) and the CNN14 weights check (`models.cnn14`) sit on floors that
#: may not import each other. A waveform rate below twice `PANNS_FMAX` has no room for the bands.
PANNS_SAMPLE_RATE = 32000
PANNS_N_FFT = 1024
PANNS_HOP = 320
PANNS_N_MELS = 64
PANNS_FMIN = 50.0
PANNS_FMAX = 14000.0
PANNS_REF = 1.0
PANNS_AMIN = 1e-10


def panns_mel_filters(sample_rate: int = PANNS_SAMPLE_RATE) -> "np.ndarray":
    """`(64, 513)` float32: librosa's Slaney mel filter bank of PANNs' front end at `sample_rate`
    (torchlibrosa's `logmel_extractor.melW`, transposed)."""
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=PANNS_N_FFT, n_mels=PANNS_N_MELS, fmin=PANNS_FMIN,
                               fmax=PANNS_FMAX, htk=False, norm="slaney")


@dataclass(frozen=True)
class FeatureConfig:
    """How stage one turns a clip into per-second audio features and video frame pairs.

    The defaults are the authors' definition: per 1-second segment and channel a 128-band HTK
    mel power spectrogram without filter norm (n_fft 2048, hop 1024, centred frames with reflect
    padding: 47 frames), natural log `log(mel + 1e-8)`, min-max scaling to [0, 1] of the
    segment's log-mel (both channels together), then regression deltas without padding
    (47 -> 43 -> 39 frames) stacked as `[x[4:-4], d[2:-2], dd]`.

    With `audio: waveform` a segment is stored as its waveform instead: both channels resampled to
    `waveform_rate`, `(2, waveform_samples)` (`(2, 32000)` for one second at PANNs' 32 kHz); the
    log-mel fields then describe nothing stored, and stage two computes PANNs' log-mel from the
    waveform on the training device (:mod:`avsc_pipeline.dataio.front_end`).

    Channel order of the `(6, n_mels, n_frames)` tensor, whatever the definition: log-mel, delta,
    delta-delta of the left channel, then the same of the right (`[0:3]` left, `[3:6]` right,
    which `dataio.batch_augment.ChannelSwap` exchanges). The authors' array orders by kind
    instead (`[L, R, dL, dR, ddL, ddR]`); the two differ by a fixed permutation of the first
    convolution's input channels.

    Attributes:
        sample_rate: audio rate in Hz; other rates are resampled.
        segment_samples: samples per segment (one second).
        n_fft: FFT size (and window length).
        hop_length: samples between frames.
        window: window name (librosa's `get_window`).
        center: centre the frames (pad `n_fft // 2` on each side of the segment).
        pad_mode: how centred frames are padded, `reflect` or `constant` (zeros).
        power: exponent of the magnitude spectrum (2: power).
        n_mels: mel bands.
        fmin: lowest mel frequency in Hz.
        fmax: highest mel frequency in Hz.
        htk: HTK mel scale (else Slaney's).
        mel_norm: mel filter normalization (`slaney`, or None for none).
        log: `natural` (`log(mel + log_offset)`) or `db` (`power_to_db` with the `db_*` fields).
        log_offset: added before the natural log.
        db_ref: `power_to_db`'s `ref`.
        db_amin: `power_to_db`'s `amin`.
        db_top: `power_to_db`'s `top_db` (None: no floor).
        scaling: min-max scaling of the log-mel to [0, 1] (deltas follow): `segment` (each
            segment by its own minimum and maximum over both channels), `clip` (the segments of
            one extraction call, i.e. one clip, together) or `none`. A constant log-mel (digital
            silence) scales to zeros.
        delta: `regression` (the authors' deltas without padding: each pass drops
            `delta_width - 1` frames, and the log-mel and deltas are cut to the delta-deltas'
            frames) or `librosa` (`librosa.feature.delta`, same length, Savitzky-Golay).
        delta_width: frames in the delta window (odd, >= 3).
        frame_times: video frames kept per segment, in seconds from the segment start.
        image_size: side of the resized square frames.
        audio_dtype: `float32` or `float16`.
        audio: what a segment's audio is stored as: `logmel` (the features above) or `waveform`
            (both channels resampled to `waveform_rate`).
        waveform_rate: the stored waveform's rate in Hz (`audio: waveform`; PANNs' 32000). One
            segment holds `segment_samples * waveform_rate / sample_rate` samples, which must be
            whole, and PANNs' front end needs at least 28000 (its bands reach 14 kHz).
    """

    sample_rate: int = 48000
    segment_samples: int = 48000
    n_fft: int = 2048
    hop_length: int = 1024
    window: str = "hann"
    center: bool = True
    pad_mode: str = "reflect"
    power: float = 2.0
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 24000.0
    htk: bool = True
    mel_norm: Optional[str] = None
    log: str = "natural"
    log_offset: float = 1e-8
    db_ref: float = 1.0
    db_amin: float = 1e-10
    db_top: Optional[float] = None
    scaling: str = "segment"
    delta: str = "regression"
    delta_width: int = 5
    frame_times: Tuple[float, ...] = (0.0, 14.0 / 30.0)
    image_size: int = 224
    audio_dtype: str = "float32"
    audio: str = "logmel"
    waveform_rate: int = 32000

    def __post_init__(self) -> None:
        check_int(self, ("sample_rate", "segment_samples", "n_fft", "hop_length", "n_mels", "delta_width"), minimum=1)
        if self.segment_samples < self.n_fft:
            raise ValueError(
                f"expected segment_samples >= n_fft, got {self.segment_samples} < {self.n_fft}"
            )
        if self.audio_dtype not in ("float32", "float16"):
            raise ValueError(f"expected audio_dtype 'float32' or 'float16', got {self.audio_dtype!r}")
        for name, choices in (("pad_mode", PAD_MODES), ("log", LOG_KINDS), ("scaling", SCALINGS),
                              ("delta", DELTA_KINDS)):
            check_choice(self, name, choices)
        if self.delta_width < 3 or self.delta_width % 2 == 0:
            raise ValueError(f"expected an odd delta_width >= 3, got {self.delta_width}")
        if not self.log_offset > 0:
            raise ValueError(f"expected log_offset > 0, got {self.log_offset!r}")
        if self.n_frames < 1 or self.stft_frames < self.delta_width:
            raise ValueError(f"expected at least delta_width={self.delta_width} frames and one frame after "
                             f"the deltas, got {self.stft_frames} frames -> {self.n_frames}")
        if not self.frame_times or any(t < 0 or t >= 1.0 for t in self.frame_times):
            raise ValueError(f"expected frame_times within [0, 1) s, got {self.frame_times}")
        if self.image_size < 1:
            raise ValueError(f"expected image_size >= 1, got {self.image_size}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"expected 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}"
            )
        self._check_waveform()

    def _check_waveform(self) -> None:
        check_choice(self, "audio", AUDIO_KINDS)
        check_int(self, ("waveform_rate",), minimum=1)
        if self.audio != "waveform":
            return
        if (self.segment_samples * self.waveform_rate) % self.sample_rate:
            raise ValueError(f"expected a whole number of waveform samples per segment "
                             f"(segment_samples * waveform_rate / sample_rate), got {self.segment_samples} * "
                             f"{self.waveform_rate} / {self.sample_rate}")
        if self.waveform_rate < 2 * PANNS_FMAX:
            raise ValueError(f"expected waveform_rate >= {int(2 * PANNS_FMAX)} (PANNs' front end has mel bands up "
                             f"to {int(PANNS_FMAX)} Hz), got {self.waveform_rate}")

    @property
    def stft_frames(self) -> int:
        """STFT frames per segment: `1 + S // hop` centred (47 for the defaults), else
        `1 + (S - n_fft) // hop` (39 with hop 1200)."""
        if self.center:
            return 1 + self.segment_samples // self.hop_length
        return 1 + (self.segment_samples - self.n_fft) // self.hop_length

    @property
    def delta_trim(self) -> int:
        """Frames each regression-delta pass drops (`delta_width - 1`; 0 for librosa's deltas)."""
        return self.delta_width - 1 if self.delta == "regression" else 0

    @property
    def n_frames(self) -> int:
        """Frames per segment in the features: 39 for the defaults (47 -> 43 -> 39) and for
        hop 1200 without centring and librosa's deltas."""
        return self.stft_frames - 2 * self.delta_trim

    @property
    def waveform_samples(self) -> int:
        """Samples per segment of the stored waveform at `waveform_rate` (32000 for one second)."""
        return self.segment_samples * self.waveform_rate // self.sample_rate

    @property
    def audio_shape(self) -> Tuple[int, ...]:
        """Shape of one segment's stored audio: `(6, n_mels, n_frames)` log-mel features, or
        `(2, waveform_samples)` with `audio: waveform`."""
        if self.audio == "waveform":
            return (2, self.waveform_samples)
        return (6, self.n_mels, self.n_frames)

    @property
    def video_shape(self) -> Tuple[int, int, int, int]:
        """Shape of one segment's frames, `(len(frame_times), 3, image_size, image_size)`."""
        return (len(self.frame_times), 3, self.image_size, self.image_size)


# The offline augmentation operations, each the `variant` of the rows it writes
# (re-exported as `storage.shards.AUGMENT_VARIANTS`).
OFFLINE_OPS: Tuple[str, ...] = AUGMENT_VARIANTS  # each writes rows whose `variant` is its name
RESAMPLE_QUALITIES = ("LQ", "MQ", "HQ", "VHQ")
SPEED_METHODS = ("stretch", "resample")
NOISE_KINDS = ("fixed", "snr")
MIX_KINDS = ("two_gains", "one_gain")


@dataclass(frozen=True)
class OfflineAugmentConfig:
    """Which operations to apply, how often, how, and the ranges their parameters are drawn from.

    The defaults are the authors' values: pitch uniform in [-4, 4] semitones, speed by time
    stretching (tempo changes, pitch kept) at a rate uniform in [0.5, 2] (a shorter result
    repeated end to end, everything cut to the clip's length), noise `x + 0.01 * N(0, 1)` on
    every non-zero sample, mixing `f1 * a + f2 * b` with `f1` and `f2` each uniform in [0.5, 1].

    Attributes:
        ops: operations, each writing its own rows (`variant` = the operation's name).
        copies: augmented versions per clip and operation, each with its own draw.
        seed: seed of every draw (non-negative).
        pitch_semitones: `(low, high)` of the uniform pitch shift, in semitones.
        speed_method: `stretch` (phase-vocoder time stretch, `librosa.effects.time_stretch`:
            tempo only, the clip's length kept) or `resample` (pitch and tempo together, the
            length divided by the factor).
        speed_factor: `(low, high)` of the uniform stretch rate or speed factor (> 1 is faster).
        noise: `fixed` (`x + noise_std * N(0, 1)` on non-zero samples) or `snr` (white noise at
            an SNR drawn from `noise_snr_db`, measured on the whole clip).
        noise_std: standard deviation of the `fixed` noise.
        noise_snr_db: `(low, high)` of the uniform signal-to-noise ratio in dB (`snr`).
        mix: `two_gains` (`f1 * a + f2 * b`, both gains drawn from `mix_gain`) or `one_gain`
            (`a + g * b`, `g` drawn from `mix_gain`).
        mix_gain: `(low, high)` of the uniform mixing gain(s).
        n_fft: FFT size of the phase vocoder (pitch shift and time stretch; librosa's default).
        hop_length: hop of the phase vocoder (librosa's default, `n_fft // 4`).
        resample_quality: soxr quality of the resampling steps (`HQ` is librosa's default).
    """

    ops: Tuple[str, ...] = OFFLINE_OPS
    copies: int = 1
    seed: int = 0
    pitch_semitones: Tuple[float, float] = (-4.0, 4.0)
    speed_method: str = "stretch"
    speed_factor: Tuple[float, float] = (0.5, 2.0)
    noise: str = "fixed"
    noise_std: float = 0.01
    noise_snr_db: Tuple[float, float] = (10.0, 40.0)
    mix: str = "two_gains"
    mix_gain: Tuple[float, float] = (0.5, 1.0)
    n_fft: int = 2048
    hop_length: int = 512
    resample_quality: str = "HQ"

    def __post_init__(self) -> None:
        unknown = [op for op in self.ops if op not in OFFLINE_OPS]
        if not self.ops or unknown or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"expected distinct ops from {list(OFFLINE_OPS)}, got {list(self.ops)}")
        check_int(self, ("copies", "n_fft", "hop_length"), minimum=1)
        check_int(self, ("seed",), minimum=0)
        check_range(self, "pitch_semitones", -12.0, 12.0)
        check_choice(self, "speed_method", SPEED_METHODS)
        check_range(self, "speed_factor", 0.25, 4.0)
        check_choice(self, "noise", NOISE_KINDS)
        if not isinstance(self.noise_std, (int, float)) or isinstance(self.noise_std, bool) or not self.noise_std >= 0:
            raise ValueError(f"expected noise_std >= 0, got {self.noise_std!r}")
        check_range(self, "noise_snr_db", -20.0, 120.0)
        check_choice(self, "mix", MIX_KINDS)
        check_range(self, "mix_gain", 0.0, 10.0)
        if self.n_fft % 2 or self.n_fft % self.hop_length:
            raise ValueError(f"expected an even n_fft that hop_length divides, got {self.n_fft} and {self.hop_length}")
        check_choice(self, "resample_quality", RESAMPLE_QUALITIES)


def feature_config_of(attrs: Dict[str, Any], source: str = "shard") -> FeatureConfig:
    """The FeatureConfig stored in a shard's attributes."""
    return from_dict(FeatureConfig, attrs["feature_config"], source=source)


def augment_config_of(attrs: Dict[str, Any], source: str = "shard") -> Optional[OfflineAugmentConfig]:
    """The OfflineAugmentConfig stored in an augmented shard's attributes (None when absent)."""
    import json

    stored = attrs.get("augment_config")
    if stored is None:
        return None
    return from_dict(OfflineAugmentConfig, json.loads(stored) if isinstance(stored, str) else stored, source=source)
