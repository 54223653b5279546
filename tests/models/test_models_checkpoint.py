"""The checkpoint: one artifact and one resume state, atomic save, weights_only load, one-line
errors, model rebuild, format-1 files."""

import numpy as np
import pytest
import torch

from avsc_pipeline.config import to_dict
from avsc_pipeline.models.checkpoint import (
    FORMAT, FORMAT_VERSION, CheckpointError, ModelArtifact, ResumeState, load_checkpoint, model_from_artifact,
    save_checkpoint,
)
from avsc_pipeline.models.classifier import build_model
from avsc_pipeline.sections.model import ModelConfig

CONFIG = ModelConfig(audio_widths=(8, 16, 32), video="small_cnn", fusion_hidden=(16, 8))
CLASSES = ["airport", "bus", "park"]


def _trained_model():
    torch.manual_seed(0)
    model = build_model(CONFIG, len(CLASSES))
    model.train()
    model(torch.randn(4, 6, 128, 39), torch.randn(4, 2, 3, 32, 32))  # moves BN statistics
    return model.eval()


def _artifact(net, **overrides):
    fields = dict(weights=net.state_dict(), classes=CLASSES,
                  config={"model": to_dict(CONFIG), "train": {"epochs": 2}, "features": {"n_mels": 128}},
                  audio_stats={"mean": [0.0] * 6, "std": [1.0] * 6},
                  embedding_means={"audio": torch.zeros(3), "video": torch.zeros(64)}, epoch=2)
    fields.update(overrides)
    return ModelArtifact(**fields)


def _resume():
    return ResumeState(epoch=2, step=40, epoch_batches=0, optimizer={"state": {}}, scheduler={}, scaler={},
                       preparer={"0": {}}, rng={"0": {"torch": torch.zeros(3, dtype=torch.uint8)}},
                       sampler={"seed": 0, "epoch": 2})


def test_round_trip_gives_identical_outputs(tmp_path):
    model = _trained_model()
    path = tmp_path / "best.pt"
    save_checkpoint(path, _artifact(model), _resume())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no .tmp left
    raw = torch.load(path, weights_only=True)
    assert (raw["format"], raw["format_version"]) == (FORMAT, FORMAT_VERSION)
    ckpt = load_checkpoint(path)
    assert ckpt.artifact.classes == CLASSES and ckpt.artifact.config["train"] == {"epochs": 2}
    assert ckpt.artifact.modality == "joint" and ckpt.artifact.feature_config == {"n_mels": 128}
    assert ckpt.resume.step == 40 and ckpt.resume.epoch == 2
    rebuilt = model_from_artifact(ckpt.artifact)
    assert not rebuilt.training
    audio, video = torch.randn(2, 6, 128, 39), torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(audio, video), model(audio, video))


def test_scoring_only_checkpoint_has_no_resume_state(tmp_path):
    save_checkpoint(tmp_path / "a.pt", _artifact(_trained_model()))
    assert load_checkpoint(tmp_path / "a.pt").resume is None


def test_compile_and_ddp_prefixes_are_stripped(tmp_path):
    model = _trained_model()
    wrapped = {"_orig_mod.module." + k: v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "c.pt", _artifact(model, weights=wrapped))
    rebuilt = model_from_artifact(load_checkpoint(tmp_path / "c.pt").artifact)
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)


def test_format_1_files_are_read(tmp_path):
    model = _trained_model()
    config = to_dict(CONFIG)
    del config["modality"]
    old = {"format": FORMAT, "format_version": 1, "model": model.state_dict(),
           "config": {"model": config, "train": {"stage": "joint", "epochs": 2}}, "stage": "joint",
           "classes": CLASSES, "feature_config": {"n_mels": 128}, "audio_stats": None, "embedding_means": None,
           "epoch": 2, "step": 40}
    torch.save(old, tmp_path / "old.pt")
    artifact = load_checkpoint(tmp_path / "old.pt").artifact
    # format 1 left out the keys the authors' definitions added: read back with their earlier values
    from avsc_pipeline import earlier

    assert artifact.modality == "joint" and artifact.feature_config == {"n_mels": 128, **earlier.FEATURES}
    assert artifact.epoch == 2
    assert "stage" not in artifact.config["train"]
    model_from_artifact(artifact)


def _one_line_error(path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    return message


def test_bad_files_are_refused_in_one_line(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, _artifact(_trained_model()))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated or corrupt" in _one_line_error(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    assert "not an avsc-pipeline checkpoint" in _one_line_error(foreign)
    assert "not found" in _one_line_error(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in _one_line_error(tmp_path / "empty.pt")
    (tmp_path / "noise.pt").write_bytes(b"not a checkpoint at all")
    _one_line_error(tmp_path / "noise.pt")
    newer = tmp_path / "newer.pt"
    torch.save({"format": FORMAT, "format_version": 99}, newer)
    assert "format_version" in _one_line_error(newer)
    assert issubclass(CheckpointError, ValueError)


def test_unloadable_values_and_missing_sections_are_refused_on_save(tmp_path):
    model = _trained_model()
    with pytest.raises(TypeError, match=r"\['audio_stats'\]\['mean'\].*numpy.ndarray"):
        save_checkpoint(tmp_path / "x.pt", _artifact(model, audio_stats={"mean": np.zeros(6)}))
    with pytest.raises(CheckpointError, match="'model' section"):
        save_checkpoint(tmp_path / "x.pt", _artifact(model, config={"train": {}}))
    with pytest.raises(CheckpointError, match="non-empty list"):
        save_checkpoint(tmp_path / "x.pt", _artifact(model, classes=[]))
    assert not any(tmp_path.iterdir())
