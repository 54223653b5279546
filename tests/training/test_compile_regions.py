"""torch.compile in regions (the FCNN, each dense block or ResNet layer), with the compiler cache
in the run folder, reused on --resume, and the compile time in train.log."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import pytest

from avsc_pipeline.models.classifier import build_model
from avsc_pipeline.sections.model import ModelConfig
from avsc_pipeline.training.compile_regions import ARTIFACTS_NAME, CACHE_FOLDER, model_regions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import NO_AUGMENT, make_features, sections  # noqa: E402 - the trainer tests' toy run


@pytest.mark.parametrize("backbone,expected", [
    ("densenet161", ["audio"] + [f"video.features.denseblock{i}" for i in range(1, 5)]),
    ("resnet18", ["audio"] + [f"video.layer{i}" for i in range(1, 5)]),
    ("small_cnn", ["audio", "video.backbone"]),
])
def test_the_regions_are_the_fcnn_and_each_block_of_the_backbone(backbone, expected):
    model = build_model(ModelConfig(modality="joint", audio_widths=(4, 4, 4), video=backbone, video_weights=None,
                                    fusion_hidden=(8,)), 10)
    assert [name for name, _ in model_regions(model)] == expected


@pytest.mark.slow
def test_a_compiled_run_logs_its_compile_time_and_resumes_from_its_cache(tmp_path, caplog):
    from avsc_pipeline.training.run import train_run

    caplog.set_level(logging.INFO, logger="avsc_pipeline")

    features = make_features(tmp_path / "features", rows=60)
    run = tmp_path / "run"
    recipe = sections("model.modality=audio", "train.compile=true", "train.epochs=1", *NO_AUGMENT)
    train_run(features, run, recipe, progress=False)
    log = (run / "train.log").read_text()
    assert "compile: regions audio" in log and "compile: the first step (compiling the regions) took" in log
    assert (run / CACHE_FOLDER / ARTIFACTS_NAME).is_file()
    longer = recipe.replace(train=dataclasses.replace(recipe.train, epochs=2))
    train_run(features, run, longer, resume=True, progress=False)
    assert "loaded the compiler cache" in (run / "train.log").read_text()
