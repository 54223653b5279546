"""The waveform audio definition of stage one (`features.audio: waveform`).

Each segment is stored as its waveform, both channels, resampled from the clip's
`sample_rate` to `waveform_rate` (PANNs' 32 kHz by default) with librosa's resampler
(:data:`RES_TYPE`), one segment at a time: a segment of a long clip is resampled exactly as a
one-second evaluation clip is. Stage two computes PANNs' log-mel from it on the training device
(:mod:`avsc_pipeline.dataio.front_end`).

:class:`WaveformSegments` has the call signature of the log-mel extractor
(:class:`~avsc_pipeline.features.audio.FastLogMel`), so extraction, offline augmentation and
`avsc-predict` store either definition through one path (`features.extract.audio_extractor`).
"""

from __future__ import annotations

import numpy as np

from avsc_pipeline.sections.features import FeatureConfig

#: librosa's resampler for the stored waveform (its default: soxr at high quality).
RES_TYPE = "soxr_hq"


class WaveformSegments:
    """`(K, 2, segment_samples)` segments at `sample_rate` -> `(K, 2, waveform_samples)` float32
    at `waveform_rate`.

    Args:
        config: a feature config with `audio: waveform`.
    """

    def __init__(self, config: FeatureConfig) -> None:
        if not isinstance(config, FeatureConfig):
            raise TypeError(f"expected a FeatureConfig, got {type(config).__name__}")
        if config.audio != "waveform":
            raise ValueError(f"expected a feature config with audio 'waveform', got {config.audio!r}")
        self.config = config

    def __repr__(self) -> str:
        cfg = self.config
        return f"WaveformSegments({cfg.sample_rate} Hz -> {cfg.waveform_rate} Hz, shape={cfg.audio_shape})"

    def __call__(self, segments: np.ndarray) -> np.ndarray:
        """Resample segments.

        Args:
            segments: `(K, 2, segment_samples)` float32 at `sample_rate`.

        Returns:
            `(K, 2, waveform_samples)` float32 at `waveform_rate`.
        """
        import librosa

        cfg = self.config
        expected = (2, cfg.segment_samples)
        if not isinstance(segments, np.ndarray) or segments.ndim != 3 or segments.shape[1:] != expected:
            shape = getattr(segments, "shape", type(segments).__name__)
            raise ValueError(f"expected segments of shape (K, {expected[0]}, {expected[1]}), got {shape}")
        if cfg.waveform_rate == cfg.sample_rate:
            return segments.astype(np.float32, copy=True)
        out = librosa.resample(segments.astype(np.float32, copy=False), orig_sr=cfg.sample_rate,
                               target_sr=cfg.waveform_rate, res_type=RES_TYPE, axis=-1)
        if out.shape[-1] != cfg.waveform_samples:
            raise ValueError(f"expected {cfg.waveform_samples} samples per resampled segment, got {out.shape[-1]}")
        return np.ascontiguousarray(out, dtype=np.float32)
