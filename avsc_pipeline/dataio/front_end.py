"""The on-device log-mel front end of waveform shards (`features.audio: waveform`).

PANNs' definition (Kong et al., the torchlibrosa `Spectrogram` + `LogmelFilterBank` their CNN14
was trained behind): a 1024-point periodic Hann STFT with hop 320, centred with reflect padding,
the power spectrum through 64 Slaney-scale, Slaney-normalized mel bands from 50 to 14000 Hz
(librosa's filter bank), then `10 log10(max(mel, 1e-10))` (librosa's `power_to_db` with ref 1.0,
amin 1e-10 and no top_db). At PANNs' 32 kHz a one-second segment gives `(64, 101)`.

The :class:`~avsc_pipeline.dataio.preparation.BatchPreparer` runs it on the training device before
the masks, the channel swap and the mixup, which then act on its output as they act on stored
log-mel features. It runs outside autocast, in float64 through the mel product (within 1e-5 dB
of librosa in float64; the product is small), and returns float32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from avsc_pipeline.errors import describe
from avsc_pipeline.sections.features import (
    PANNS_AMIN, PANNS_FMAX, PANNS_FMIN, PANNS_HOP, PANNS_N_FFT, PANNS_N_MELS, PANNS_REF, FeatureConfig,
    panns_mel_filters,
)


class PannsLogMel(nn.Module):
    """Waveforms -> PANNs' log-mel in dB, per channel.

    Args:
        sample_rate: the waveforms' rate in Hz (at least 28000: the bands reach 14 kHz).
    """

    def __init__(self, sample_rate: int = 32000) -> None:
        super().__init__()
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate < 2 * PANNS_FMAX:
            raise ValueError(f"expected an int sample_rate >= {int(2 * PANNS_FMAX)}, got {sample_rate!r}")
        self.sample_rate = sample_rate
        # float64, as librosa's window: the leakage of a loud tone into far bands depends on it.
        self.register_buffer("window", torch.hann_window(PANNS_N_FFT, periodic=True, dtype=torch.float64),
                             persistent=False)
        self.register_buffer("mel", torch.as_tensor(panns_mel_filters(sample_rate), dtype=torch.float64),
                             persistent=False)
        self.db_offset = 10.0 * math.log10(max(PANNS_AMIN, PANNS_REF))

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={PANNS_N_FFT}, hop={PANNS_HOP}, n_mels={PANNS_N_MELS}, "
                f"fmin={PANNS_FMIN:g}, fmax={PANNS_FMAX:g}")

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Log-mel of each channel.

        Args:
            waveform: `(B, C, N)` floating point, e.g. `(B, 2, 32000)` float32 at `sample_rate`
                (N > 512: reflect padding needs half a window).

        Returns:
            `(B, C, 64, 1 + N // 320)` float32 in dB, e.g. `(B, 2, 64, 101)`.
        """
        if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
            raise TypeError(f"expected a floating point waveform tensor, got {describe(waveform)}")
        if waveform.ndim != 3 or waveform.shape[-1] <= PANNS_N_FFT // 2:
            raise ValueError(f"expected waveforms of shape (B, C, N) with N > {PANNS_N_FFT // 2}, "
                             f"got {tuple(waveform.shape)}")
        batch, channels, samples = waveform.shape
        # float64 through the mel product: with a float32 window (or FFT) the bands 60 dB and more
        # below a loud tone move by 1e-3 dB; the product is small (64 bands, 101 frames).
        flat = waveform.reshape(batch * channels, samples).to(torch.float64)
        spec = torch.stft(flat, PANNS_N_FFT, hop_length=PANNS_HOP, win_length=PANNS_N_FFT,
                          window=self.window, center=True, pad_mode="reflect", normalized=False,
                          onesided=True, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B * C, 513, T) float64
        mel = torch.matmul(self.mel, power)  # (B * C, 64, T)
        log_mel = 10.0 * torch.log10(mel.clamp_min(PANNS_AMIN)) - self.db_offset
        return log_mel.to(torch.float32).reshape(batch, channels, PANNS_N_MELS, -1)


def front_end_for(features: Optional[FeatureConfig]) -> Optional[PannsLogMel]:
    """The front end that batches of shards made with `features` need on the device: PANNs'
    log-mel for waveform shards, None for stored log-mel features (or when not known)."""
    if features is None or features.audio != "waveform":
        return None
    return PannsLogMel(features.waveform_rate)
