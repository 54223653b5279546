"""`train.validation: evaluate` end to end: the run trains on every training location, selects
on the `evaluate` folder, records it, and avsc-eval marks that folder's figures."""

from __future__ import annotations

import csv

import pytest

from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint
from avsc_pipeline.models.checkpoint import load_checkpoint
from avsc_pipeline.sections import load_recipe
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import write_random_shard
from avsc_pipeline.training.run import train_run

FEATURES = FeatureConfig(n_mels=32, image_size=32)


@pytest.mark.slow
def test_a_run_selected_on_evaluate_is_marked_when_scored_there(tmp_path):
    features = tmp_path / "features"
    for split, seed in (("train", 0), ("evaluate", 1)):  # the seed names distinct locations
        write_random_shard(features / split / "shard-00000.h5", 100, FEATURES, seed=seed, with_video=False)
        build_index(features / split)
    recipe = load_recipe(None, ["model.modality=audio", "model.audio_widths=[8, 8, 8]", "loader.batch_size=8",
                                "loader.num_workers=0", "train.epochs=1", "train.validation=evaluate",
                                "batch_augment.mixup_fraction=0"])
    run = tmp_path / "run"
    train_run(features, run, recipe, device="cpu", progress=False)
    artifact = load_checkpoint(run / "best.pt").artifact
    assert artifact.config["train"]["validation"] == "evaluate"
    with open(run / "metrics.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    result = evaluate_checkpoint(run / "best.pt", features / "evaluate", out_dir=tmp_path / "eval", device="cpu",
                                 progress=False, calibrated=False)
    # The validation figures are the evaluate folder's, as avsc-eval scores them (at T = 1).
    assert result["n_segments"] == 100 and result["selected_on_scored_split"] is True
    assert float(row["val_accuracy"]) == pytest.approx(result["accuracy"], abs=1e-12)
    assert float(row["val_log_loss"]) == pytest.approx(result["log_loss_uncalibrated"], rel=1e-5)
