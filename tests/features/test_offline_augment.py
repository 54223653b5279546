"""Offline augmentation operations against independent references (librosa's effects, FFT peaks,
envelopes, SNR, the formulas written out), the authors' defaults and the earlier variants."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from avsc_pipeline.config import dump_yaml
from avsc_pipeline.sections import load_section
from avsc_pipeline.features import pvoc
from avsc_pipeline.sections.features import OfflineAugmentConfig
from avsc_pipeline.testing import librosa_dsp
from avsc_pipeline.features.offline_augment import (
    AugmentError, Augmenter, add_fixed_noise, add_noise, change_speed, change_tempo,
    draw_params, mix, output_samples, pitch_shift, repeat_to_length, variant_rngs,
)
from avsc_pipeline.storage.shards import AUGMENT_VARIANTS

SR = 48000
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# The earlier variants, as shipped in configs/offline_augment/resample-snr.yaml.
EARLIER = OfflineAugmentConfig(pitch_semitones=(-2.0, 2.0), speed_method="resample", speed_factor=(0.9, 1.1),
                               noise="snr", mix="one_gain", mix_gain=(0.3, 0.7))


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
    assert y.shape == (2, output_samples(dataclasses.replace(draw_params(EARLIER, "c", "speed", 0), speed=factor),
                                         x.shape[1]))
    assert y.shape[1] / x.shape[1] == pytest.approx(1 / factor, rel=0.01)
    assert peak_frequency(y[0, SR // 4 : -SR // 4]) / 500.0 == pytest.approx(factor, rel=0.01)
    b = burst(500.0)
    assert active_samples(change_speed(b, SR, factor)[1]) / active_samples(b[1]) == pytest.approx(1 / factor, rel=0.01)


def test_noise_has_the_drawn_snr_on_the_whole_clip():
    config = EARLIER
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
            for gain in (p.gain, p.clip_gain):  # f1 and f2 both uniform in [0.5, 1]
                assert 0.5 <= gain <= 1.0 and gain == float(np.float32(gain))
            assert p.gain != p.clip_gain
            seen.add(p.partner)
            assert p == draw_params(config, clip, "mix", copy, list(reversed(same_class)))  # order-free
    assert seen == set(same_class)
    pitch = [draw_params(config, "x", "pitch", c).semitones for c in range(200)]
    stretch = [draw_params(config, "x", "speed", c) for c in range(200)]
    assert -4 <= min(pitch) < -3.8 and 3.8 < max(pitch) <= 4
    assert all(math.isnan(p.speed) for p in stretch)
    assert 0.5 <= min(p.stretch for p in stretch) < 0.55 and 1.95 < max(p.stretch for p in stretch) <= 2.0
    noise = draw_params(config, "x", "noise", 0)
    assert math.isnan(noise.snr_db) and output_samples(stretch[0], 1000) == 1000
    assert draw_params(config, "x", "pitch", 0) != draw_params(config, "x", "pitch", 1)
    assert draw_params(config, "x", "pitch", 0) != draw_params(dataclasses.replace(config, seed=8), "x", "pitch", 0)
    with pytest.raises(AugmentError, match="no other clip"):
        draw_params(config, "bus-0", "mix", 0, ["bus-0"])


def test_earlier_variants_draw_from_the_same_keys_in_the_same_order():
    """The added variants draw their new values after the earlier ones: the earlier variants' draws
    are those of the same key under the authors' variants (stretch rate = speed factor, the
    partner and its gain unchanged, clip gain 1)."""
    same_class = ["a", "b", "c"]
    for copy in range(10):
        authors = dataclasses.replace(OfflineAugmentConfig(seed=2), speed_factor=(0.9, 1.1), mix_gain=(0.3, 0.7))
        earlier = dataclasses.replace(EARLIER, seed=2)
        new, old = draw_params(authors, "a", "speed", copy), draw_params(earlier, "a", "speed", copy)
        assert new.stretch == old.speed and math.isnan(new.speed) and math.isnan(old.stretch)
        new, old = draw_params(authors, "a", "mix", copy, same_class), draw_params(earlier, "a", "mix", copy, same_class)
        assert (new.partner, new.gain) == (old.partner, old.gain) and old.clip_gain == 1.0
    assert 10.0 <= draw_params(EARLIER, "a", "noise", 0).snr_db <= 40.0


def test_time_stretch_matches_librosa_then_repeats_and_cuts_to_the_clip():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    x = (tone(350.0, 1.0) + 0.05 * rng.standard_normal((2, SR))).astype(np.float32)
    for rate in (0.5, 0.83, 1.37, 2.0):  # the range's ends and inside
        reference = librosa.effects.time_stretch(x.astype(np.float64), rate=rate)  # round(n / rate) samples
        tiled = np.tile(reference, (1, -(-SR // reference.shape[1])))[:, :SR]
        ours = change_tempo(x, rate)
        assert ours.shape == x.shape and ours.dtype == np.float32
        assert np.sqrt(np.mean((ours - tiled) ** 2) / np.mean(tiled ** 2)) < 1e-3
        slow = librosa_dsp().change_tempo(x, rate)
        assert np.sqrt(np.mean((slow - tiled) ** 2) / np.mean(tiled ** 2)) < 2e-2  # librosa in float32
    fast_half = change_tempo(x, 2.0)
    np.testing.assert_array_equal(fast_half[:, SR // 2 :], fast_half[:, : SR // 2])  # repeated end to end


@pytest.mark.parametrize("rate", [0.5, 1.5])
def test_time_stretch_keeps_the_pitch_and_changes_the_tempo(rate):
    x = tone(600.0, 2.0)
    assert peak_frequency(change_tempo(x, rate)[0, SR // 4 : SR]) == pytest.approx(600.0, rel=0.01)  # pitch kept
    b = burst(600.0, before=0.2, length=0.6, after=1.2)
    one_copy = change_tempo(b, rate)[0, : min(b.shape[1], int(round(b.shape[1] / rate)))]
    # the phase vocoder changes a tone's level at some rates (as librosa's does), so "sounding"
    # is any level above silence, in 128-sample frames
    frames = one_copy[: len(one_copy) // 128 * 128].reshape(-1, 128).astype(np.float64)
    sounding = np.count_nonzero(np.sqrt(np.mean(frames ** 2, axis=1)) > 1e-3) * 128
    assert sounding == pytest.approx(0.6 * SR / rate, abs=2048 + 512)  # the window's smear at most


def test_repeat_to_length():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(repeat_to_length(a, 7), np.tile(a, (1, 3))[:, :7])
    np.testing.assert_array_equal(repeat_to_length(a, 2), a[:, :2])
    with pytest.raises(ValueError, match="expected audio with samples"):
        repeat_to_length(a[:, :0], 4)


def test_fixed_noise_is_x_plus_001_n_on_non_zero_samples():
    x = tone(300.0)
    x[:, : SR // 2] = 0.0  # digital silence stays silent
    config = OfflineAugmentConfig()
    _, rng = variant_rngs(config.seed, "c", "noise", 0)
    y = add_fixed_noise(x, 0.01, rng)
    _, again = variant_rngs(config.seed, "c", "noise", 0)
    n = again.standard_normal(x.shape, dtype=np.float32)  # the same draw, the formula written out
    np.testing.assert_array_equal(y, np.where(x != 0, x + np.float32(0.01) * n, x))
    np.testing.assert_array_equal(y[:, : SR // 2], 0.0)
    noise = (y - x)[:, SR // 2 :].astype(np.float64)
    assert np.std(noise) == pytest.approx(0.01, rel=0.02) and abs(np.mean(noise)) < 5e-4
    assert np.corrcoef(noise[0], noise[1])[0, 1] < 0.05  # independent per channel
    augmenter = Augmenter(x, SR, "c", config)
    np.testing.assert_array_equal(augmenter(draw_params(config, "c", "noise", 0)), y)
    np.testing.assert_array_equal(Augmenter(np.zeros((2, SR), np.float32), SR, "c", config)(
        draw_params(config, "c", "noise", 0)), 0.0)  # no error: silence has no SNR to respect


def test_mix_with_two_gains_is_f1_a_plus_f2_b():
    a, b = tone(300.0), tone(700.0, seconds=1.5)
    out = mix(a, b, 0.8, clip_gain=0.6)
    expected = 0.6 * a.astype(np.float64)
    expected[:, : b.shape[1]] += 0.8 * b
    np.testing.assert_allclose(out, expected, atol=1e-6)
    config = OfflineAugmentConfig()
    params = draw_params(config, "a", "mix", 0, ["a", "b"])
    np.testing.assert_array_equal(Augmenter(a, SR, "a", config)(params, b),
                                  np.float32(params.clip_gain) * a + np.float32(params.gain) * np.pad(b, ((0, 0), (0, SR // 2))))


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
    slow = Augmenter(x, SR, "c", OfflineAugmentConfig(), dsp=librosa_dsp())
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
    stretch = draw_params(OfflineAugmentConfig(), "c", "speed", 0)
    np.testing.assert_array_equal(fast(stretch), change_tempo(x, stretch.stretch))
    assert fast._analysis is first  # one analysis for the pitch shifts and the time stretch


def test_augmented_schema_follows_the_variants():
    from avsc_pipeline.sections.features import FeatureConfig
    from avsc_pipeline.storage.shards import augment_columns

    earlier = set(augment_columns(FeatureConfig()))
    assert set(augment_columns(FeatureConfig(), EARLIER)) == earlier
    assert set(augment_columns(FeatureConfig(), OfflineAugmentConfig())) == earlier | {"stretch", "clip_gain"}
    assert set(augment_columns(FeatureConfig(), dataclasses.replace(EARLIER, mix="two_gains"))) == earlier | {"clip_gain"}


def test_config_round_trips_through_yaml_and_rejects_bad_values(tmp_path):
    for config in (OfflineAugmentConfig(ops=("pitch", "mix"), copies=3, seed=5, noise_snr_db=(5.0, 20.0)), EARLIER,
                   dataclasses.replace(EARLIER, mix="two_gains")):
        dump_yaml({"offline_augment": config}, tmp_path / "c.yaml")
        assert load_section(tmp_path / "c.yaml", "offline_augment", OfflineAugmentConfig) == config
    assert OfflineAugmentConfig().ops == AUGMENT_VARIANTS == ("pitch", "speed", "noise", "mix")
    assert load_section(CONFIGS / "offline_augment" / "resample-snr.yaml", "offline_augment",
                        OfflineAugmentConfig) == EARLIER
    assert load_section(CONFIGS / "paper.yaml", "offline_augment", OfflineAugmentConfig) == OfflineAugmentConfig()
    for bad, match in [
        (dict(ops=("pitch", "reverb")), "expected distinct ops"),
        (dict(copies=0), "expected copies to be an int >= 1, got 0"),
        (dict(seed=-1), "expected seed to be an int >= 0"),
        (dict(pitch_semitones=(2.0, -2.0)), "expected pitch_semitones with"),
        (dict(speed_factor=(0.9,)), "expected speed_factor to be a pair"),
        (dict(resample_quality="best"), "expected resample_quality in"),
        (dict(hop_length=500), "hop_length divides"),
        (dict(speed_method="rubberband"), "expected speed_method in"),
        (dict(noise="pink"), "expected noise in"),
        (dict(mix="three_gains"), "expected mix in"),
        (dict(noise_std=-0.1), "expected noise_std >= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            OfflineAugmentConfig(**bad)
    with pytest.raises(TypeError, match="expected a numpy array"):
        pitch_shift([0.0] * 10, SR, 1.0)
    with pytest.raises(ValueError, match="float32 audio"):
        change_speed(np.zeros(SR), SR, 1.0)
    assert math.isnan(draw_params(config, "c", "pitch", 0).gain)
