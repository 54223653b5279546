"""Offline augmentation operations against independent references (FFT peaks, envelopes, SNR)."""

import dataclasses
import math

import numpy as np
import pytest

from avsc_pipeline.config import dump_yaml
from avsc_pipeline.recipe import load_section
from avsc_pipeline.features import pvoc
from avsc_pipeline.features.offline_augment import (
    AugmentError, Augmenter, OfflineAugmentConfig, add_noise, change_speed, draw_params, mix,
    output_samples, pitch_shift, variant_rngs,
)
from avsc_pipeline.storage.shards import AUGMENT_VARIANTS

SR = 48000


def tone(freq, seconds=2.0, channels=2, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return np.stack([0.4 * np.sin(2 * np.pi * freq * t + c) for c in range(channels)]).astype(np.float32)


def burst(freq, before=0.5, length=1.0, after=0.5, sr=SR):
    """Silence, a tone of `length` seconds, silence: `(2, n)` float32."""
    on = tone(freq, length, sr=sr)
    return np.concatenate([np.zeros((2, int(before * sr)), np.float32), on,
                           np.zeros((2, int(after * sr)), np.float32)], axis=1)


def peak_frequency(x, sr=SR):
    """Frequency of the largest FFT peak (8x zero padding, Hann window)."""
    n = len(x)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(n), n=8 * n))
    return np.argmax(spectrum) * sr / (8 * n)


def active_samples(x, frame=128):
    """Samples where the frame RMS is above half its maximum (the length of a tone burst)."""
    frames = x[: len(x) // frame * frame].reshape(-1, frame)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return int(np.count_nonzero(rms > 0.5 * rms.max())) * frame


@pytest.mark.parametrize("semitones", [2.0, -2.0, 0.7])
def test_pitch_shift_moves_a_tone_and_keeps_its_duration(semitones):
    x = tone(440.0)
    y = pitch_shift(x, SR, semitones)
    assert y.shape == x.shape and y.dtype == np.float32
    for ch in range(2):
        ratio = peak_frequency(y[ch, SR // 4 : -SR // 4]) / 440.0
        assert ratio == pytest.approx(2 ** (semitones / 12), rel=0.01)
    b = burst(440.0)
    shifted = pitch_shift(b, SR, semitones)
    assert abs(active_samples(shifted[0]) - active_samples(b[0])) <= 512  # one hop


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.037])
def test_speed_changes_duration_by_one_over_f_and_frequency_by_f(factor):
    x = tone(500.0)
    y = change_speed(x, SR, factor)
    assert y.shape == (2, output_samples(dataclasses.replace(draw_params(OfflineAugmentConfig(), "c", "speed", 0),
                                                             speed=factor), x.shape[1]))
    assert y.shape[1] / x.shape[1] == pytest.approx(1 / factor, rel=0.01)
    assert peak_frequency(y[0, SR // 4 : -SR // 4]) / 500.0 == pytest.approx(factor, rel=0.01)
    b = burst(500.0)
    assert active_samples(change_speed(b, SR, factor)[1]) / active_samples(b[1]) == pytest.approx(1 / factor, rel=0.01)


def test_noise_has_the_drawn_snr_on_the_whole_clip():
    config = OfflineAugmentConfig()
    x = tone(300.0) * np.linspace(0.1, 1.0, 2 * SR, dtype=np.float32)  # uneven power over time
    for copy in range(5):
        params = draw_params(config, "clip-a", "noise", copy)
        assert 10.0 <= params.snr_db <= 40.0
        _, rng = variant_rngs(config.seed, "clip-a", "noise", copy)
        y = add_noise(x, params.snr_db, rng)
        noise = y.astype(np.float64) - x
        measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise ** 2))
        assert measured == pytest.approx(params.snr_db, abs=0.5)
        assert abs(np.mean(noise)) < 0.01 * np.std(noise)
        assert np.corrcoef(noise[0], noise[1])[0, 1] < 0.05  # independent per channel
    with pytest.raises(AugmentError, match="silent"):
        add_noise(np.zeros((2, SR), np.float32), 20.0, np.random.default_rng(0))


def test_mix_is_a_plus_g_b_with_the_partner_cut_or_padded():
    a, b = tone(300.0), tone(700.0, seconds=1.5)
    out = mix(a, b, 0.42)
    expected = a.astype(np.float64)
    expected[:, : b.shape[1]] += 0.42 * b
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_array_equal(mix(b, a, 0.5), b + np.float32(0.5) * a[:, : b.shape[1]])
    with pytest.raises(ValueError, match="expected a partner with 2 channels"):
        mix(a, a[:1], 0.5)


def test_draws_are_keyed_in_range_and_partners_are_same_class_never_self():
    config = OfflineAugmentConfig(seed=7)
    same_class = [f"bus-{i}" for i in range(5)]
    seen = set()
    for clip in same_class:
        for copy in range(20):
            p = draw_params(config, clip, "mix", copy, same_class)
            assert p.partner in same_class and p.partner != clip
            assert 0.3 <= p.gain <= 0.7 and p.gain == float(np.float32(p.gain))
            seen.add(p.partner)
            assert p == draw_params(config, clip, "mix", copy, list(reversed(same_class)))  # order-free
    assert seen == set(same_class)
    pitch = [draw_params(config, "x", "pitch", c).semitones for c in range(200)]
    speed = [draw_params(config, "x", "speed", c).speed for c in range(200)]
    assert -2 <= min(pitch) < -1.8 and 1.8 < max(pitch) <= 2 and 0.9 <= min(speed) and max(speed) <= 1.1
    assert draw_params(config, "x", "pitch", 0) != draw_params(config, "x", "pitch", 1)
    assert draw_params(config, "x", "pitch", 0) != draw_params(dataclasses.replace(config, seed=8), "x", "pitch", 0)
    with pytest.raises(AugmentError, match="no other clip"):
        draw_params(config, "bus-0", "mix", 0, ["bus-0"])


def test_fast_phase_vocoder_matches_librosa_in_double_precision():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    x = (tone(350.0, 1.0) + 0.05 * rng.standard_normal((2, SR))).astype(np.float32)
    for rate in (0.89, 1.12):
        reference = librosa.effects.time_stretch(x.astype(np.float64), rate=rate)
        ours = pvoc.time_stretch(x, rate)
        assert ours.shape == reference.shape
        assert np.sqrt(np.mean((ours - reference) ** 2) / np.mean(reference ** 2)) < 1e-3
    reference = librosa.effects.pitch_shift(x.astype(np.float64), sr=SR, n_steps=1.5)
    ours = pitch_shift(x, SR, 1.5)
    assert np.sqrt(np.mean((ours - reference) ** 2) / np.mean(reference ** 2)) < 1e-3


def test_augmenter_reuses_one_analysis_and_both_backends_agree_on_the_tone():
    x = tone(440.0)
    fast = Augmenter(x, SR, "c", OfflineAugmentConfig())
    slow = Augmenter(x, SR, "c", OfflineAugmentConfig(dsp="librosa"))
    params = [draw_params(OfflineAugmentConfig(), "c", "pitch", copy) for copy in range(2)]
    outs = [fast(p) for p in params]
    first = fast._analysis
    assert first is not None and fast(params[0]) is not outs[0] and fast._analysis is first
    for p, out in zip(params, outs):
        expected = 440.0 * 2 ** (p.semitones / 12)
        assert peak_frequency(out[0, SR // 4 : -SR // 4]) == pytest.approx(expected, rel=0.01)
        assert peak_frequency(slow(p)[0, SR // 4 : -SR // 4]) == pytest.approx(expected, rel=0.01)
    with pytest.raises(ValueError, match="expected partner audio"):
        fast(draw_params(OfflineAugmentConfig(), "c", "mix", 0, ["c", "d"]))


def test_config_round_trips_through_yaml_and_rejects_bad_values(tmp_path):
    config = OfflineAugmentConfig(ops=("pitch", "mix"), copies=3, seed=5, noise_snr_db=(5.0, 20.0))
    dump_yaml({"offline_augment": config}, tmp_path / "c.yaml")
    assert load_section(tmp_path / "c.yaml", "offline_augment", OfflineAugmentConfig) == config
    assert OfflineAugmentConfig().ops == AUGMENT_VARIANTS == ("pitch", "speed", "noise", "mix")
    for bad, match in [
        (dict(ops=("pitch", "reverb")), "expected distinct ops"),
        (dict(copies=0), "expected copies to be an int >= 1, got 0"),
        (dict(seed=-1), "expected seed to be an int >= 0"),
        (dict(pitch_semitones=(2.0, -2.0)), "expected pitch_semitones with"),
        (dict(speed_factor=(0.9,)), "expected speed_factor to be a pair"),
        (dict(dsp="rubberband"), "expected dsp in"),
        (dict(resample_quality="best"), "expected resample_quality in"),
        (dict(hop_length=500), "hop_length divides"),
    ]:
        with pytest.raises(ValueError, match=match):
            OfflineAugmentConfig(**bad)
    with pytest.raises(TypeError, match="expected a numpy array"):
        pitch_shift([0.0] * 10, SR, 1.0)
    with pytest.raises(ValueError, match="float32 audio"):
        change_speed(np.zeros(SR), SR, 1.0)
    assert math.isnan(draw_params(config, "c", "pitch", 0).gain)
