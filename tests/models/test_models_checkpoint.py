"""The checkpoint format: atomic save, weights_only load, one-line errors, model rebuild."""

import numpy as np
import pytest
import torch

from avsc_pipeline.config import to_dict
from avsc_pipeline.models.checkpoint import (
    FORMAT, FORMAT_VERSION, CheckpointError, load_checkpoint, model_from_checkpoint,
    save_checkpoint,
)
from avsc_pipeline.models.classifier import build_model
from avsc_pipeline.models.config import ModelConfig

CONFIG = ModelConfig(audio_widths=(8, 16, 32), video="small_cnn", fusion_hidden=(16, 8))
CLASSES = ["airport", "bus", "park"]


def _trained_model():
    torch.manual_seed(0)
    model = build_model(CONFIG, "joint", len(CLASSES))
    model.train()
    model(torch.randn(4, 6, 128, 39), torch.randn(4, 2, 3, 32, 32))  # moves BN statistics
    return model.eval()


def _state(net, **overrides):
    state = {
        "model": net.state_dict(),
        "config": {"model": to_dict(CONFIG), "train": {"epochs": 2}},
        "stage": "joint",
        "classes": CLASSES,
        "feature_config": {"n_mels": 128},
        "audio_stats": {"mean": [0.0] * 6, "std": [1.0] * 6},
        "embedding_means": {"audio": torch.zeros(3), "video": None},
        "epoch": 2,
        "step": 40,
    }
    state.update(overrides)
    return state


def test_round_trip_gives_identical_outputs(tmp_path):
    model = _trained_model()
    path = tmp_path / "best.pt"
    save_checkpoint(_state(model), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no .tmp left
    ckpt = load_checkpoint(path)
    assert (ckpt["format"], ckpt["format_version"]) == (FORMAT, FORMAT_VERSION)
    assert ckpt["classes"] == CLASSES and ckpt["config"]["train"] == {"epochs": 2}
    rebuilt = model_from_checkpoint(ckpt)
    assert not rebuilt.training
    audio, video = torch.randn(2, 6, 128, 39), torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(audio, video), model(audio, video))


def test_compile_and_ddp_prefixes_are_stripped(tmp_path):
    model = _trained_model()
    wrapped = {"_orig_mod.module." + k: v for k, v in model.state_dict().items()}
    save_checkpoint(_state(model, model=wrapped), tmp_path / "c.pt")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "c.pt"))
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)


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
    save_checkpoint(_state(_trained_model()), good)
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
    torch.save({**_state(_trained_model()), "format": FORMAT, "format_version": 99}, newer)
    assert "format_version" in _one_line_error(newer)
    assert issubclass(CheckpointError, ValueError)


def test_unloadable_values_and_missing_keys_are_refused_on_save(tmp_path):
    model = _trained_model()
    with pytest.raises(TypeError, match=r"checkpoint\['audio_stats'\]\['mean'\].*numpy.ndarray"):
        save_checkpoint(_state(model, audio_stats={"mean": np.zeros(6)}), tmp_path / "x.pt")
    state = _state(model)
    del state["classes"]
    with pytest.raises(ValueError, match=r"missing \['classes'\]"):
        save_checkpoint(state, tmp_path / "x.pt")
    assert not any(tmp_path.iterdir())
