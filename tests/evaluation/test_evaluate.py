"""evaluate_checkpoint on stage-one features of the tiny set: scores against scikit-learn,
probabilities against a forward pass written out here, refusals, modalities, unlabeled splits."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint, segment_filenames
from avsc_pipeline.evaluation.output_file import read_predictions
import dataclasses

from avsc_pipeline.models.checkpoint import CheckpointError, load_checkpoint, model_from_artifact, save_checkpoint
from avsc_pipeline.storage.shards import list_shards

C = 10


def shard_rows(folder):
    """Every row of a folder's shards, read with h5py (not the loader under test)."""
    parts = {k: [] for k in ("audio", "video", "label", "clip_id", "segment")}
    for path in list_shards(folder):
        with h5py.File(path, "r") as handle:
            for key in parts:
                data = handle[key].asstr()[()] if key == "clip_id" else handle[key][()]
                parts[key].append(np.asarray(data))
    return {k: np.concatenate(v) for k, v in parts.items()}


def reference_probs(ckpt_path, rows, modality="joint"):
    """Softmax of the model on rows normalized by hand, in float64."""
    artifact = load_checkpoint(ckpt_path).artifact
    model = model_from_artifact(artifact)
    stats = artifact.audio_stats
    mean, std = (torch.tensor(stats[k], dtype=torch.float32).view(1, -1, 1, 1) for k in ("mean", "std"))
    audio = (torch.from_numpy(rows["audio"]).float() - mean) / std
    frame_mean, frame_std = (torch.tensor(v).view(1, 1, 3, 1, 1) for v in (model.frame_mean, model.frame_std))
    video = (torch.from_numpy(rows["video"]).float() / 255.0 - frame_mean) / frame_std
    with torch.no_grad():
        e_audio, e_video = model.embed_audio(audio), model.embed_video(video)
        if modality == "audio":
            e_video = artifact.embedding_means["video"].expand(len(audio), -1)
        if modality == "video":
            e_audio = artifact.embedding_means["audio"].expand(len(audio), -1)
        return torch.softmax(model.classify(e_audio, e_video).double(), dim=1).numpy()


def expected_names(rows):
    counts = {c: int((rows["clip_id"] == c).sum()) for c in set(rows["clip_id"])}
    return [f"audio/{c}-{s}.wav" if counts[c] > 1 else f"audio/{c}.wav"
            for c, s in zip(rows["clip_id"], rows["segment"])]


@pytest.fixture(scope="module")
def joint_eval(features, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return out, evaluate_checkpoint(checkpoints["joint"], features["evaluate"], out_dir=out, progress=False)


def test_predictions_are_the_models_probabilities_one_row_per_segment(joint_eval, features, checkpoints):
    out, _ = joint_eval
    rows = shard_rows(features["evaluate"])
    names, labels, probs, classes = read_predictions(out / "predictions.tsv")
    assert len(names) == len(rows["label"]) == 9
    assert names == expected_names(rows)
    np.testing.assert_allclose(probs, reference_probs(checkpoints["joint"], rows), rtol=0, atol=1e-6)
    assert labels == [classes[k] for k in probs.argmax(axis=1)]
    assert probs.max(axis=1).min() < 0.9 and probs.max() > 0.3  # far from uniform, not one-hot


@pytest.fixture
def scored(joint_eval, features):
    """`(metrics.json, probabilities, labels, clip ids, class names)` of the joint model's pass."""
    out, result = joint_eval
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["log_loss"] == result["log_loss"] and saved["classes"] == result["classes"]
    _, _, probs, classes = read_predictions(out / "predictions.tsv")
    rows = shard_rows(features["evaluate"])
    return saved, probs, rows["label"].astype(np.int64), rows["clip_id"], classes


def test_segment_counts(scored):
    saved = scored[0]
    assert saved["n_segments"] == 9 and saved["n_unlabeled"] == 0 and saved["n_clips"] == 3


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_accuracy_log_loss_and_confusion_equal_scikit_learn(scored):
    saved, probs, y, _, _ = scored
    predicted = probs.argmax(axis=1)
    assert saved["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted), abs=1e-12)
    assert saved["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(C)), rel=1e-12)
    assert saved["confusion_matrix"] == skm.confusion_matrix(y, predicted, labels=range(C)).tolist()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_macro_accuracy_equals_balanced_accuracy(scored):
    saved, probs, y, _, _ = scored
    assert saved["class_mean_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, probs.argmax(axis=1)),
                                                         abs=1e-12)


def test_per_class_figures_equal_scikit_learn(scored):
    saved, probs, y, _, classes = scored
    recall = skm.recall_score(y, probs.argmax(axis=1), labels=range(C), average=None, zero_division=0)
    for k, name in enumerate(classes):
        entry = saved["per_class"][name]
        if (y == k).any():
            assert entry["accuracy"] == pytest.approx(recall[k], abs=1e-12), name
            reference = skm.log_loss(y[y == k], probs[y == k], labels=range(C))
            assert entry["log_loss"] == pytest.approx(reference, rel=1e-12), name
        else:
            assert entry == {"accuracy": None, "log_loss": None, "n": 0}, name


def test_clip_figures_pool_segment_probabilities(scored):
    saved, probs, y, clip_ids, _ = scored
    ids = sorted(set(clip_ids))
    clip_probs = np.stack([probs[clip_ids == c].mean(axis=0) for c in ids])
    clip_y = np.array([y[clip_ids == c][0] for c in ids])
    assert saved["clip_log_loss"] == pytest.approx(skm.log_loss(clip_y, clip_probs, labels=range(C)), rel=1e-12)
    assert saved["clip_accuracy"] == pytest.approx(skm.accuracy_score(clip_y, clip_probs.argmax(axis=1)), abs=1e-12)


def test_the_confusion_figure_is_a_png(joint_eval):
    assert (joint_eval[0] / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_say_where_they_came_from(joint_eval, features, checkpoints):
    out, _ = joint_eval
    saved = json.loads((out / "metrics.json").read_text())
    artifact = load_checkpoint(checkpoints["joint"]).artifact
    blob = json.dumps(artifact.config, sort_keys=True, separators=(",", ":")).encode()
    assert saved["checkpoint_config_hash"] == hashlib.sha256(blob).hexdigest()[:16]
    index = json.loads((features["evaluate"] / "index.json").read_text())
    assert saved["features_config_hash"] == index["config_hash"]
    assert saved["checkpoint"] == str(checkpoints["joint"].resolve())
    assert (saved["split"], saved["modality"], saved["model_modality"], saved["run"]) == (
        "evaluate", "joint", "joint", "joint")
    assert saved["segments_per_s"] > 0


def test_default_out_dir_is_in_the_run_folder(features, checkpoints):
    result = evaluate_checkpoint(checkpoints["audio"], features["evaluate"], batch_size=4, progress=False)
    out = checkpoints["audio"].parent / "eval" / "evaluate"
    assert result["files"]["metrics.json"] == out / "metrics.json" and (out / "predictions.tsv").is_file()
    assert result["modality"] == "audio" and 0 <= result["accuracy"] <= 1


def test_unlabeled_split_gets_predictions_and_no_metrics(features, checkpoints, tmp_path):
    result = evaluate_checkpoint(checkpoints["joint"], features["test"], out_dir=tmp_path, progress=False)
    assert result["labeled"] is False and result["n_segments"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.tsv"]
    names, _, probs, _ = read_predictions(tmp_path / "predictions.tsv")
    assert len(names) == 9 and np.allclose(probs.sum(axis=1), 1.0)


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_one_modality_replaces_the_other_by_its_stored_mean(joint_eval, features, checkpoints, modality):
    result = evaluate_checkpoint(checkpoints["joint"], features["evaluate"], modality=modality, progress=False)
    out = checkpoints["joint"].parent / "eval" / f"evaluate-{modality}"
    assert result["modality"] == modality and (out / "metrics.json").is_file()
    _, _, probs, _ = read_predictions(out / "predictions.tsv")
    rows = shard_rows(features["evaluate"])
    np.testing.assert_allclose(probs, reference_probs(checkpoints["joint"], rows, modality), rtol=0, atol=1e-6)
    _, _, both, _ = read_predictions(joint_eval[0] / "predictions.tsv")
    assert np.abs(probs - both).max() > 1e-3


def test_one_modality_needs_a_joint_checkpoint_with_means(features, checkpoints, tmp_path):
    with pytest.raises(ValueError, match="needs a joint checkpoint, got an audio model"):
        evaluate_checkpoint(checkpoints["audio"], features["evaluate"], out_dir=tmp_path, modality="video")
    with pytest.raises(ValueError, match="mean video embedding"):
        evaluate_checkpoint(checkpoints["no_means"], features["evaluate"], out_dir=tmp_path, modality="audio")
    with pytest.raises(ValueError, match="expected modality in"):
        evaluate_checkpoint(checkpoints["joint"], features["evaluate"], out_dir=tmp_path, modality="both-ish")
    assert not list(tmp_path.iterdir())


def _altered(ckpt_path, tmp_path, **changes):
    artifact = dataclasses.replace(load_checkpoint(ckpt_path).artifact, **changes)
    path = tmp_path / "altered.pt"
    save_checkpoint(path, artifact)
    return path


def test_other_feature_config_or_class_list_is_refused(features, checkpoints, tmp_path):
    artifact = load_checkpoint(checkpoints["joint"]).artifact
    config = {**artifact.config, "features": {**artifact.feature_config, "fmin": 20.0}}
    other = _altered(checkpoints["joint"], tmp_path, config=config)
    with pytest.raises(ValueError, match=r"fmin: 20\.0 != 0\.0") as info:
        evaluate_checkpoint(other, features["evaluate"], out_dir=tmp_path / "out")
    assert str(features["evaluate"]) in str(info.value) and str(other) in str(info.value)
    renamed = list(artifact.classes)
    renamed[3] = "underground"
    other = _altered(checkpoints["joint"], tmp_path, classes=renamed)
    with pytest.raises(ValueError, match="class list") as info:
        evaluate_checkpoint(other, features["evaluate"], out_dir=tmp_path / "out")
    assert "underground" in str(info.value) and str(features["evaluate"]) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_truncated_checkpoint_is_a_one_line_error(features, checkpoints, tmp_path):
    data = checkpoints["joint"].read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        evaluate_checkpoint(broken, features["evaluate"], out_dir=tmp_path / "out")
    assert str(info.value).startswith(f"{broken}: ") and "\n" not in str(info.value)


def test_segment_filenames():
    names = segment_filenames(["a", "a", "b", "c", "c", "c"], [0, 1, 0, 2, 0, 1])
    assert names == ["audio/a-0.wav", "audio/a-1.wav", "audio/b.wav", "audio/c-2.wav", "audio/c-0.wav", "audio/c-1.wav"]
    with pytest.raises(ValueError, match="as many segments"):
        segment_filenames(["a"], [0, 1])


def test_segment_filenames_use_the_stored_audio_files():
    names = segment_filenames(["a", "a", "b"], [0, 1, 0], ["x/take 1.flac", "x/take 1.flac", "../b.wav"])
    assert names == ["x/take 1-0.wav", "x/take 1-1.wav", "../b.wav"]
    with pytest.raises(ValueError, match="as many audio files"):
        segment_filenames(["a"], [0], [])


def test_predictions_name_a_csv_data_sets_own_files(tmp_path):
    from avsc_pipeline.corpus.manifest import load_csv
    from avsc_pipeline.features.extract import extract_split
    from avsc_pipeline.sections.features import FeatureConfig
    from avsc_pipeline.testing import noisy_tone, write_test_checkpoint, write_wav

    write_wav(tmp_path / "field" / "take 01.wav", noisy_tone(1.0, seed=1))
    write_wav(tmp_path / "field" / "b" / "take.wav", noisy_tone(2.0, seed=2))
    (tmp_path / "clips.csv").write_text("audio,label,id\nfield/take 01.wav,dog,first\nfield/b/take.wav,cat,second\n")
    folder = tmp_path / "features" / "evaluate"
    extract_split(load_csv(tmp_path / "clips.csv"), folder, FeatureConfig(image_size=32), ["cat", "dog"],
                  progress=False)
    ckpt = write_test_checkpoint(tmp_path / "run" / "best.pt", folder, modality="audio")
    evaluate_checkpoint(ckpt, folder, out_dir=tmp_path / "eval", device="cpu", progress=False)
    names, _, _, _ = read_predictions(tmp_path / "eval" / "predictions.tsv")
    # One row per one-second segment: the one-second clip by its own name, the two-second clip's
    # segments as `<folder>/<stem>-<segment>.wav` (the predictions format's rule).
    assert names == ["field/take 01.wav", "field/b/take-0.wav", "field/b/take-1.wav"]


def test_the_confusion_matrix_names_the_run_and_the_modality_scored(features, checkpoints, tmp_path, monkeypatch):
    from avsc_pipeline.evaluation import plots

    titles = []
    monkeypatch.setattr(plots, "plot_confusion_matrix", lambda matrix, classes, path, title: titles.append(title) or path)
    evaluate_checkpoint(checkpoints["audio"], features["evaluate"], out_dir=tmp_path, progress=False)
    assert titles and titles[0].startswith("audio, evaluate (audio)")


def test_a_gpu_scores_in_larger_batches_than_training():
    from avsc_pipeline.evaluation.evaluate import CUDA_EVAL_BATCH, loader_config_of
    from avsc_pipeline.models.checkpoint import ModelArtifact

    artifact = ModelArtifact(weights={}, classes=["a"], config={"model": {}, "loader": {"batch_size": 32}})
    assert loader_config_of(artifact, None, None, "x", torch.device("cuda")).batch_size == CUDA_EVAL_BATCH
    assert loader_config_of(artifact, None, None, "x", torch.device("cpu")).batch_size == 32
    assert loader_config_of(artifact, 8, None, "x", torch.device("cuda")).batch_size == 8
