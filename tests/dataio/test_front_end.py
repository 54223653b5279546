"""The on-device log-mel front end of waveform shards: parity with librosa's `melspectrogram` +
`power_to_db` of PANNs' definition, and the batch preparer that runs it before the masks, the
channel swap and the mixup."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from avsc_pipeline.dataio.front_end import PannsLogMel, front_end_for
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.stats import AudioStats
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.sections.loading import BatchAugmentConfig

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
WAVEFORM = FeatureConfig(audio="waveform")
NO_AUGMENT = dict(spec_augment=False, channel_swap_p=0.0, video_num_ops=0, mixup_fraction=0.0)


def librosa_log_mel(signal: np.ndarray, sr: int = 32000) -> np.ndarray:
    """PANNs' definition written out with librosa, in float64: `(64, T)` dB."""
    mel = librosa.feature.melspectrogram(
        y=signal.astype(np.float64), sr=sr, n_fft=1024, hop_length=320, win_length=1024, window="hann",
        center=True, pad_mode="reflect", power=2.0, n_mels=64, fmin=50.0, fmax=14000.0, htk=False, norm="slaney")
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


def signals(n: int = 32000, sr: int = 32000) -> np.ndarray:
    """`(2, 3, n)` float32: noise, a loud tone over faint noise (far bands 60 dB and more below
    it), amplitude-modulated noise; silence; a chirp; a click train."""
    rng = np.random.default_rng(0)
    t = np.arange(n) / sr
    rows = [0.1 * rng.standard_normal(n), 0.3 * np.sin(2 * np.pi * 440 * t) + 1e-3 * rng.standard_normal(n),
            0.5 * rng.standard_normal(n) * np.sin(2 * np.pi * 3 * t), np.zeros(n),
            0.2 * np.sin(2 * np.pi * (100 + 6000 * t) * t), (np.arange(n) % 800 == 0) * 0.9]
    return np.stack(rows).reshape(2, 3, n).astype(np.float32)


def test_the_front_end_matches_librosa_within_1e_4_db():
    audio = signals()
    got = PannsLogMel(32000)(torch.from_numpy(audio))
    assert got.shape == (2, 3, 64, 101) and got.dtype == torch.float32
    for b in range(2):
        for c in range(3):
            expected = librosa_log_mel(audio[b, c])
            assert np.abs(got[b, c].numpy() - expected).max() < 1e-4, (b, c)
    assert torch.all(got[1, 0] == -100.0)  # silence: 10 log10(amin)


def test_the_front_end_at_another_rate_and_its_checks():
    audio = signals(n=48000, sr=48000)[0, :1]
    got = PannsLogMel(48000)(torch.from_numpy(audio)[None])
    assert got.shape == (1, 1, 64, 151)
    assert np.abs(got[0, 0].numpy() - librosa_log_mel(audio[0], sr=48000)).max() < 1e-4
    with pytest.raises(ValueError, match="expected an int sample_rate >= 28000, got 16000"):
        PannsLogMel(16000)
    with pytest.raises(ValueError, match=r"expected waveforms of shape \(B, C, N\) with N > 512, got \(2, 32000\)"):
        PannsLogMel()(torch.zeros(2, 32000))
    with pytest.raises(TypeError, match="expected a floating point waveform tensor"):
        PannsLogMel()(torch.zeros(1, 2, 32000, dtype=torch.int16))
    assert front_end_for(None) is None and front_end_for(FeatureConfig()) is None
    assert front_end_for(WAVEFORM).sample_rate == 32000


def waveform_batch(batch: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal((batch, 2, 32000))).astype(np.float32)
    video = rng.integers(0, 256, (batch, 2, 3, 8, 8), dtype=np.uint8)
    return {"audio": torch.from_numpy(audio), "video": torch.from_numpy(video),
            "label": torch.arange(batch) % 3}


def test_the_preparer_computes_the_front_end_on_waveform_batches():
    batch = waveform_batch()
    kept = batch["audio"].clone()
    preparer = BatchPreparer(3, None, IMAGENET, BatchAugmentConfig(), seed=0, features=WAVEFORM).eval()
    out = preparer(batch)
    assert out["audio"].shape == (4, 2, 64, 101) and out["audio"].dtype == torch.float32
    for b in range(4):
        for c in range(2):
            assert np.abs(out["audio"][b, c].numpy() - librosa_log_mel(kept[b, c].numpy())).max() < 1e-4
    train = preparer.train()(batch)
    assert not torch.equal(train["audio"], out["audio"]) and torch.equal(batch["audio"], kept)


def test_masks_swap_and_mix_act_on_the_front_ends_log_mel():
    batch = waveform_batch()
    reference = BatchPreparer(3, None, IMAGENET, None, features=WAVEFORM).eval()(batch)["audio"]
    swap = BatchPreparer(3, None, IMAGENET, BatchAugmentConfig(**{**NO_AUGMENT, "channel_swap_p": 1.0}),
                         features=WAVEFORM).train()(batch)["audio"]
    assert torch.equal(swap, reference.flip(1))
    masks = BatchAugmentConfig(**{**NO_AUGMENT, "spec_augment": True, "max_mask_fraction": 0.5, "mask_fill": "zero"})
    masked = BatchPreparer(3, None, IMAGENET, masks, seed=1, features=WAVEFORM).train()(batch)["audio"]
    changed = masked != reference
    assert bool(changed.any()) and bool((masked[changed] == 0).all())
    mix = BatchAugmentConfig(**{**NO_AUGMENT, "mixup_fraction": 1.0, "mixup_ratio": 0.4})
    mixed = BatchPreparer(3, None, IMAGENET, mix, seed=2, features=WAVEFORM).train()(batch)
    assert mixed["audio"].shape == reference.shape and not torch.equal(mixed["audio"], reference)
    assert torch.allclose(mixed["target"].sum(dim=1), torch.ones(4))


def test_statistics_are_refused_for_waveform_features():
    stats = AudioStats((0.0, 0.0), (1.0, 1.0), 1, "hash", ())
    with pytest.raises(ValueError, match="expected no audio statistics for waveform features"):
        BatchPreparer(3, stats, IMAGENET, features=WAVEFORM)
