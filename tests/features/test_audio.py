"""Audio features against the librosa reference (the authors' definition and the earlier one),
scaling and silence, the shipped definitions, and bad audio input."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.errors import BadClipError
from avsc_pipeline.config import from_dict, to_dict
from avsc_pipeline.features.audio import (
    FastLogMel, delta_matrix, load_audio, reference_features, regression_delta, regression_matrices, split_segments,
)
from avsc_pipeline.sections import load_section
from avsc_pipeline.testing import noisy_tone, write_wav

CFG = FeatureConfig()  # the authors' definition
# The earlier definition, as shipped in configs/features/librosa-db.yaml.
LIBROSA_DB = FeatureConfig(hop_length=1200, center=False, pad_mode="constant", htk=False, mel_norm="slaney",
                           log="db", scaling="none", delta="librosa", delta_width=9)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def authors_features(segment: np.ndarray) -> np.ndarray:
    """PAPER.md's definition written out for one `(2, 48000)` segment, in the authors' stacking
    (`[L, R, dL, dR, ddL, ddR]`): librosa mel with their arguments, log(mel + 1e-8), min-max over
    the segment, deltas by the formula over explicit slices."""
    import librosa

    mel = np.stack([librosa.feature.melspectrogram(y=ch, sr=48000, n_fft=2048, hop_length=1024, n_mels=128,
                                                   fmin=0, fmax=24000, htk=True, norm=None, center=True,
                                                   pad_mode="reflect", power=2.0) for ch in segment])
    x = np.log(mel + 1e-8)
    x = (x - x.min()) / (x.max() - x.min())

    def delta(v):
        return (v[..., 3:-1] - v[..., 1:-3]) / 10 + (v[..., 4:] - v[..., :-4]) / 5

    d = delta(x)
    dd = delta(d)
    return np.concatenate([x[..., 4:-4], d[..., 2:-2], dd])


def ours_in_authors_order(features: np.ndarray) -> np.ndarray:
    """`(6, F, T)` `[L, dL, ddL, R, dR, ddR]` -> the authors' `[L, R, dL, dR, ddL, ddR]`."""
    return features[[0, 3, 1, 4, 2, 5]]


def test_defaults_are_the_authors_definition_with_39_frames():
    assert (CFG.stft_frames, CFG.n_frames, CFG.audio_shape) == (47, 39, (6, 128, 39))
    assert (LIBROSA_DB.stft_frames, LIBROSA_DB.n_frames, LIBROSA_DB.audio_shape) == (39, 39, (6, 128, 39))
    seg = split_segments(noisy_tone(1.5, seed=2), CFG)
    ref = reference_features(seg, CFG)
    assert ref.shape == (1, 6, 128, 39) and ref.dtype == np.float32
    np.testing.assert_allclose(ours_in_authors_order(ref[0]), authors_features(seg[0]), atol=1e-6)
    log_mel = ref[0, [0, 3]]
    assert log_mel.min() >= 0.0 and log_mel.max() <= 1.0


def test_regression_delta_is_librosas_width_5_delta_inside_and_drops_the_edges():
    import librosa

    x = np.random.default_rng(0).standard_normal((5, 47))
    d = regression_delta(x, 5)
    assert d.shape == (5, 43)
    np.testing.assert_allclose(d, librosa.feature.delta(x, width=5, order=1)[:, 2:-2], atol=1e-12)
    m = regression_matrices(47, 5)
    assert m.shape == (3, 47, 39)
    np.testing.assert_allclose(x @ m[2], regression_delta(d, 5), atol=1e-12)
    np.testing.assert_array_equal(x @ m[0], x[:, 4:-4])


@pytest.mark.parametrize("batch", [None, 1, 3])
def test_fast_matches_reference_on_generated_audio(batch):
    audio = noisy_tone(3.0, freq=523.0, seed=3)
    audio[1] += 0.05 * np.random.default_rng(1).standard_normal(audio.shape[1]).astype(np.float32)
    seg = split_segments(audio, CFG)
    fast = FastLogMel(CFG, batch_segments=batch)(seg)
    ref = reference_features(seg, CFG)
    assert fast.shape == ref.shape == (3, 6, 128, 39)
    assert np.abs(fast - ref).max() <= 1e-4


@pytest.mark.parametrize("noise", [1e-5, 0.0])
def test_fast_matches_reference_for_a_tone_in_near_silence(noise):
    """Bands 110 dB below a tone: float32 windowing (or a float32 FFT) would move them by 1e-4 to 7e-4."""
    seg = split_segments(noisy_tone(2.0, freq=523.0, noise=noise, seed=4), CFG)
    assert np.abs(FastLogMel(CFG)(seg) - reference_features(seg, CFG)).max() <= 1e-5


@pytest.mark.parametrize("config", [CFG, LIBROSA_DB], ids=["authors", "librosa-db"])
def test_fast_matches_reference_on_real_clips(shared_mini, config):
    fast = FastLogMel(config)
    tolerance = 1e-4 if config.scaling != "none" else 1e-3  # [0, 1] scale; dB
    for wav in sorted((shared_mini / "audio").glob("*.wav"))[:3]:
        seg = split_segments(load_audio(wav, config), config)
        assert seg.shape == (10, 2, 48000)
        diff = np.abs(fast(seg) - reference_features(seg, config)).max()
        assert diff <= tolerance, f"{wav.name}: max difference {diff}"


def test_fast_matches_reference_under_the_earlier_definition_and_other_shapes():
    seg = split_segments(noisy_tone(2.0, seed=7), CFG)
    for cfg, tolerance in [(LIBROSA_DB, 1e-3), (dataclasses.replace(LIBROSA_DB, n_mels=64, db_top=60.0, delta_width=5), 1e-3),
                           (dataclasses.replace(CFG, n_mels=64, delta_width=3, pad_mode="constant"), 1e-4),
                           (dataclasses.replace(CFG, scaling="none"), 1e-3)]:
        out = FastLogMel(cfg)(seg)
        assert out.shape == (2,) + cfg.audio_shape
        assert np.abs(out - reference_features(seg, cfg)).max() < tolerance, cfg


def test_scaling_per_segment_or_per_clip():
    audio = noisy_tone(3.0, seed=5)
    audio[:, 48000:96000] *= 0.01  # a quiet second: 40 dB lower
    seg = split_segments(audio, CFG)
    per_segment = FastLogMel(CFG)(seg)
    whole = dataclasses.replace(CFG, scaling="clip")
    per_clip = FastLogMel(whole, batch_segments=2)(seg)  # the clip spans two FFT batches
    assert np.abs(per_clip - reference_features(seg, whole)).max() <= 1e-4
    for features in (per_segment, per_clip):
        assert features[:, [0, 3]].min() >= 0.0 and features[:, [0, 3]].max() <= 1.0
    # per segment, the level is gone (while the band energies stay well above log_offset)
    np.testing.assert_allclose(per_segment[0], FastLogMel(CFG)(seg[:1] * 4)[0], atol=1e-4)
    assert per_clip[1, [0, 3]].max() < per_clip[0, [0, 3]].max() - 0.1  # the quiet second stays quieter
    unscaled = FastLogMel(dataclasses.replace(CFG, scaling="none"))(seg)[:, [0, 3]]
    np.testing.assert_allclose(per_clip[:, [0, 3]], (unscaled - unscaled.min()) / np.ptp(unscaled), atol=1e-5)


@pytest.mark.parametrize("scaling", ["segment", "clip"])
def test_silent_segment_gives_zeros_not_nan(scaling):
    cfg = dataclasses.replace(CFG, scaling=scaling)
    audio = noisy_tone(2.0, seed=1)
    audio[:, :48000] = 0.0  # digital silence in the first second
    seg = split_segments(audio, cfg)
    fast, ref = FastLogMel(cfg)(seg), reference_features(seg, cfg)
    assert np.all(np.isfinite(fast)) and np.all(np.isfinite(ref))
    if scaling == "segment":
        np.testing.assert_array_equal(fast[0], np.zeros_like(fast[0]))
        np.testing.assert_array_equal(ref[0], np.zeros_like(ref[0]))
    silent = split_segments(np.zeros((2, 48000), np.float32), cfg)
    np.testing.assert_array_equal(FastLogMel(cfg)(silent), np.zeros((1,) + cfg.audio_shape, np.float32))


def test_delta_matrix_equals_librosa_delta():
    import librosa

    x = np.random.default_rng(0).standard_normal((5, 39))
    for order in (1, 2):
        np.testing.assert_allclose(x @ delta_matrix(39, 9, order), librosa.feature.delta(x, width=9, order=order),
                                   atol=1e-10)


def test_shipped_librosa_db_config_is_the_earlier_definition():
    assert load_section(CONFIGS / "features" / "librosa-db.yaml", "features", FeatureConfig) == LIBROSA_DB
    assert load_section(CONFIGS / "paper.yaml", "features", FeatureConfig) == CFG


def test_every_field_is_written_and_read_back():
    from avsc_pipeline import earlier

    written = to_dict(LIBROSA_DB)
    assert set(written) >= set(earlier.FEATURES) and from_dict(FeatureConfig, written) == LIBROSA_DB
    mixed = dataclasses.replace(LIBROSA_DB, scaling="segment")
    assert from_dict(FeatureConfig, to_dict(mixed)) == mixed


def test_a_partial_section_takes_todays_defaults():
    partial = from_dict(FeatureConfig, {"n_mels": 64})
    assert partial.log == "natural" and partial.scaling == "segment"
    old_looking = {k: v for k, v in to_dict(LIBROSA_DB).items() if k not in ("pad_mode", "log", "log_offset",
                                                                               "scaling", "delta")}
    assert from_dict(FeatureConfig, old_looking).log == "natural"  # no earlier definition is guessed


def test_bad_feature_configs_are_named():
    for bad, match in [(dict(scaling="global"), "expected scaling in"), (dict(log="log2"), "expected log in"),
                       (dict(delta="sg"), "expected delta in"), (dict(pad_mode="edge"), "expected pad_mode in"),
                       (dict(delta_width=4), "odd delta_width"), (dict(log_offset=0.0), "log_offset > 0"),
                       (dict(hop_length=12000), "frames")]:
        with pytest.raises(ValueError, match=match):
            FeatureConfig(**bad)


def test_segments_are_non_overlapping_whole_seconds():
    audio = np.arange(2 * 130000, dtype=np.float32).reshape(2, 130000)
    seg = split_segments(audio, CFG)
    assert seg.shape == (2, 2, 48000)
    np.testing.assert_array_equal(seg[1, 0], audio[0, 48000:96000])


def test_resample_and_mono(tmp_path, caplog):
    import librosa

    tone = noisy_tone(2.0, sr=44100, channels=1)
    path = write_wav(tmp_path / "mono44.wav", tone, sr=44100, subtype="FLOAT")
    with caplog.at_level("INFO"):
        audio = load_audio(path, CFG)
    assert audio.shape == (2, int(np.ceil(tone.shape[1] * (48000 / 44100))))  # librosa's length
    np.testing.assert_array_equal(audio[0], audio[1])
    np.testing.assert_allclose(audio[0], librosa.resample(tone[0], orig_sr=44100, target_sr=48000), atol=1e-6)
    assert "mono" in caplog.text and "resampling 44100" in caplog.text


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00junk" * 10), "cannot decode"),
        (lambda p: write_wav(p, noisy_tone(0.5)), "too short"),
        (lambda p: write_wav(p, np.zeros((3, 48000 * 2), np.float32)), "channels"),
    ],
    ids=["missing", "empty", "undecodable", "short", "three-channels"],
)
def test_bad_audio_is_named(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(BadClipError, match=reason) as info:
        load_audio(path, CFG)
    assert info.value.path == str(path)


def test_truncated_audio(tmp_path):
    path = write_wav(tmp_path / "t.wav", noisy_tone(3.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        audio = load_audio(path, CFG)
    except BadClipError as err:
        assert "truncated" in err.reason or "decode" in err.reason
    else:  # libsndfile may trust the file size: then the clip must simply be shorter, never padded
        assert audio.shape[1] <= 3 * 48000 // 2 + 48000


def test_fast_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected segments of shape"):
        FastLogMel(CFG)(np.zeros((2, 1, 48000), np.float32))
