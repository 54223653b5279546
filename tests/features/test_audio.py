"""Audio features against the librosa reference, and bad audio input."""

import numpy as np
import pytest
import soundfile as sf

from avsc_pipeline.features.config import FeatureConfig
from avsc_pipeline.errors import BadClipError
from avsc_pipeline.features.audio import (
    FastLogMel, delta_matrix, load_audio, reference_features, split_segments,
)
from avsc_pipeline.testing import noisy_tone, write_wav

CFG = FeatureConfig()


def test_reference_is_librosa_and_shape():
    import librosa

    seg = split_segments(noisy_tone(1.5), CFG)
    assert seg.shape == (1, 2, 48000)
    out = reference_features(seg, CFG)
    assert out.shape == (1, 6, 128, 39) and out.dtype == np.float32
    mel = librosa.feature.melspectrogram(y=seg[0, 1], sr=48000, n_fft=2048, hop_length=1200, center=False)
    np.testing.assert_allclose(out[0, 3], librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None), atol=1e-4)


@pytest.mark.parametrize("batch", [None, 1, 3])
def test_fast_matches_reference_on_generated_audio(batch):
    audio = noisy_tone(3.0, freq=523.0, seed=3)
    audio[1] += 0.05 * np.random.default_rng(1).standard_normal(audio.shape[1]).astype(np.float32)
    seg = split_segments(audio, CFG)
    fast = FastLogMel(CFG, batch_segments=batch)(seg)
    ref = reference_features(seg, CFG)
    assert fast.shape == ref.shape == (3, 6, 128, 39)
    assert np.abs(fast - ref).max() < 1e-3


def test_fast_matches_reference_on_real_clips(shared_mini):
    fast = FastLogMel(CFG)
    for wav in sorted((shared_mini / "audio").glob("*.wav"))[:3]:
        seg = split_segments(load_audio(wav, CFG), CFG)
        assert seg.shape == (10, 2, 48000)
        diff = np.abs(fast(seg) - reference_features(seg, CFG)).max()
        assert diff < 1e-3, f"{wav.name}: max difference {diff}"


def test_fast_matches_reference_with_top_db_and_other_shape():
    cfg = FeatureConfig(n_mels=64, db_top=60.0, delta_width=5)
    seg = split_segments(noisy_tone(2.0, seed=7), cfg)
    assert np.abs(FastLogMel(cfg)(seg) - reference_features(seg, cfg)).max() < 1e-3


def test_delta_matrix_equals_librosa_delta():
    import librosa

    x = np.random.default_rng(0).standard_normal((5, 39))
    for order in (1, 2):
        np.testing.assert_allclose(x @ delta_matrix(39, 9, order), librosa.feature.delta(x, width=9, order=order),
                                   atol=1e-10)


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
