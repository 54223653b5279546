"""predict_files on the raw clips of the tiny set: agreement with evaluation of their shards,
the output files, bad inputs, and what each kind of checkpoint needs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint
from avsc_pipeline.evaluation.recordings import clips_path, predict_files, write_prediction_files
from avsc_pipeline.evaluation.output_file import read_predictions
from avsc_pipeline.corpus.tau import load_tau


@pytest.fixture(scope="module")
def evaluated(features, checkpoints, tmp_path_factory):
    """avsc-eval's predictions of the evaluate split, per stage: `(names, probs)`."""
    out = {}
    for stage in ("joint", "audio"):
        folder = tmp_path_factory.mktemp(f"eval-{stage}")
        evaluate_checkpoint(checkpoints[stage], features["evaluate"], out_dir=folder, progress=False)
        out[stage] = read_predictions(folder / "predictions.tsv")
    return out


def test_predict_equals_eval_of_the_same_clips(tau_root, checkpoints, evaluated, tmp_path):
    result = predict_files(checkpoints["joint"], load_tau(tau_root, "evaluate"), device="cpu", batch_size=5)
    assert not result.failed
    assert [c.clip.clip_id for c in result.clips] == [c.clip_id for c in load_tau(tau_root, "evaluate")]
    names, _, probs, classes = evaluated["joint"]
    ours = np.concatenate([c.probs for c in result.clips])
    assert ours.dtype == np.float64 and ours.shape == probs.shape
    np.testing.assert_allclose(ours, probs, rtol=0, atol=1e-5)
    segments_file, clips_file = write_prediction_files(result, tmp_path / "preds.tsv")
    assert clips_file == tmp_path / "preds.clips.tsv"
    got_names, _, got, got_classes = read_predictions(segments_file)
    assert got_names == names and got_classes == classes
    np.testing.assert_array_equal(got, ours)
    clip_names, clip_labels, clip_probs, _ = read_predictions(clips_file)
    assert clip_names == [f"audio/{c.clip.clip_id}.wav" for c in result.clips]
    np.testing.assert_allclose(clip_probs, ours.reshape(3, 3, -1).mean(axis=1), rtol=0, atol=1e-15)
    assert clip_labels == [classes[k] for k in clip_probs.argmax(axis=1)]


def test_audio_checkpoint_needs_no_video_and_parallel_jobs_change_nothing(tau_root, checkpoints, evaluated):
    pairs = [(clip.audio, None) for clip in load_tau(tau_root, "evaluate")]
    serial = predict_files(checkpoints["audio"], pairs, device="cpu")
    parallel = predict_files(checkpoints["audio"], pairs, device="cpu", jobs=2)
    assert not serial.failed and not parallel.failed
    probs = np.concatenate([c.probs for c in serial.clips])
    np.testing.assert_allclose(probs, evaluated["audio"][2], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([c.probs for c in parallel.clips]), probs)


def test_bad_inputs_fail_alone_naming_their_files(tau_root, checkpoints, tmp_path):
    clips = load_tau(tau_root, "evaluate")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not a wav file at all")
    renamed = tmp_path / "renamed.wav"
    shutil.copy(clips[1].audio, renamed)
    inputs = [
        (clips[0].audio, clips[0].video),
        (tmp_path / "missing.wav", clips[1].video),
        (broken, clips[1].video),
        (renamed, None),
        (clips[2].audio, tmp_path / "missing.mp4"),
    ]
    result = predict_files(checkpoints["joint"], inputs, device="cpu")
    assert [c.ok for c in result.clips] == [True, False, False, False, False]
    errors = [c.error for c in result.failed]
    assert str(tmp_path / "missing.wav") in errors[0] and "not found" in errors[0]
    assert str(broken) in errors[1]
    assert str(renamed) in errors[2] and "no video given" in errors[2]
    assert str(tmp_path / "missing.mp4") in errors[3]
    assert result.clips[0].probs.shape == (3, 10)
    alone = predict_files(checkpoints["joint"], inputs[:1], device="cpu")
    np.testing.assert_allclose(alone.clips[0].probs, result.clips[0].probs, rtol=0, atol=1e-12)
    audio_only = predict_files(checkpoints["joint"], [(renamed, None)], device="cpu", modality="audio")
    assert audio_only.clips[0].ok


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="expected jobs >= 1"):
        predict_files("x.pt", [], jobs=0)
    with pytest.raises(ValueError, match="distinct audio file stems"):
        predict_files("x.pt", [("a/x.wav", None), ("b/x.wav", None)])
    assert clips_path("out/preds.tsv").as_posix() == "out/preds.clips.tsv"
    assert clips_path("preds").as_posix() == "preds.clips.tsv"
