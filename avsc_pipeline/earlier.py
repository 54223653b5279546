"""The definitions before the authors' keys existed, as data: what a config section meant when
an artifact written by an earlier version left those keys out.

Artifacts written before today's format left a section's newer keys out whenever all of them
held these values (shards and indexes of schema version 1, checkpoints of formats 1 and 2).
Their readers, and only they, complete such sections with these values, one migration function
per version (:mod:`avsc_pipeline.storage.versions`, :mod:`avsc_pipeline.models.checkpoint`). A
user's YAML is never read this way: a missing key takes today's default.

This module imports nothing, so that storage and models, on different floors, share one copy.
"""

from __future__ import annotations

from typing import Any, Dict

#: `features:` — librosa's zero padding, dB, no scaling, librosa's deltas.
FEATURES: Dict[str, Any] = {
    "pad_mode": "constant", "log": "db", "log_offset": 1e-8, "scaling": "none", "delta": "librosa",
}
#: `offline_augment:` — resampling speed change, noise at an SNR, one gain.
OFFLINE_AUGMENT: Dict[str, Any] = {
    "speed_method": "resample", "noise": "snr", "noise_std": 0.01, "mix": "one_gain",
}
#: `loader:` — the audio standardized with the training statistics.
LOADER: Dict[str, Any] = {"audio_normalize": "standardize"}
#: Keys earlier versions wrote that no section has any more (`offline_augment.dsp`: the librosa
#: effects are now a test helper, `testing.librosa_dsp`).
DROPPED: Dict[str, tuple] = {"offline_augment": ("dsp",)}
#: `features:` keys added with the waveform definition (shard schema 3): what a feature config
#: written before them meant, log-mel features.
BEFORE_WAVEFORM: Dict[str, Any] = {"audio": "logmel", "waveform_rate": 32000}
