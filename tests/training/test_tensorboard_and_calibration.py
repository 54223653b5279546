"""A tiny training run: TensorBoard event files hold metrics.csv's figures, and the checkpoint and
avsc-eval's metrics.json say how the temperature was decided."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from avsc_pipeline.evaluation.temperature import decide_temperature
from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint
from avsc_pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from avsc_pipeline.sections import load_recipe
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import write_random_folder, write_random_shard, write_test_checkpoint
from avsc_pipeline.training.run import train_run
from avsc_pipeline.training.tensorboard import Board

FEATURES = FeatureConfig(n_mels=32, image_size=32)
TINY = ["model.modality=audio", "model.audio_widths=[8, 8, 8]", "loader.batch_size=8", "loader.num_workers=0",
        "loader.audio_stats=stats.json", "train.optimizer=adam", "train.lr=0.003", "train.weight_decay=0",
        "train.scheduler=none", "train.epochs=2", "batch_augment.spec_augment=false",
        "batch_augment.channel_swap_p=0", "batch_augment.mixup_fraction=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Two epochs of a tiny audio model with TensorBoard on, writing every step."""
    root = tmp_path_factory.mktemp("tb")
    path = write_random_shard(root / "features" / "train" / "shard-00000.h5", 200, FEATURES, seed=0, identifiers=3)
    with h5py.File(path, "r+") as handle:  # learnable: a band per class
        labels, audio = handle["label"][:], handle["audio"][:]
        for i, label in enumerate(labels):
            audio[i, :, 3 * label: 3 * label + 3] += 4.0
        handle["audio"][:] = audio
    build_index(root / "features" / "train")
    recipe = load_recipe(None, TINY + ["train.tensorboard=true", "train.tensorboard_every=1"])
    package = logging.getLogger("avsc_pipeline")
    level = package.level
    package.setLevel(logging.INFO)  # train.log gets the calibration's reason
    try:
        train_run(root / "features", root / "run", recipe, device="cpu", progress=False)
    finally:
        package.setLevel(level)
    return root


def scalars(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_the_metrics_csv_figures_per_epoch_and_per_step(run):
    found = scalars(run / "run" / "tensorboard")
    for tag in ("step/loss", "step/accuracy", "step/lr", "step/samples_per_s", "step/data_wait_fraction",
                "epoch/train_loss", "epoch/train_accuracy", "epoch/val_log_loss", "epoch/val_accuracy", "epoch/lr",
                "epoch/samples_per_s", "epoch/data_wait_fraction"):
        assert tag in found, (tag, sorted(found))
    with open(run / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for name in ("train_loss", "train_accuracy", "val_log_loss"):
        assert [step for step, _ in found[f"epoch/{name}"]] == [1, 2]
        np.testing.assert_allclose([v for _, v in found[f"epoch/{name}"]], [float(r[name]) for r in rows], rtol=1e-6)
    steps = [step for step, _ in found["step/loss"]]
    total = load_checkpoint(run / "run" / "last.pt").resume.step
    assert steps == list(range(1, total + 1)) and total > 10  # every optimizer step, each once
    assert all(0.0 <= v <= 1.0 for _, v in found["step/accuracy"])


def test_tensorboard_is_off_by_default_and_on_rank_0_only(tmp_path):
    assert not Board(tmp_path, enabled=False, every=1).active
    assert not Board(tmp_path, enabled=True, every=1, is_main=False).active
    Board(tmp_path, enabled=False, every=1).epoch({"epoch": 1, "train_loss": 1.0})
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(ValueError, match="expected tensorboard_every >= 1, got 0"):
        Board(tmp_path, enabled=True, every=0)
    with pytest.raises(ValueError, match="tensorboard_every to be an int >= 1"):
        load_recipe(None, ["train.tensorboard_every=0"])


def test_the_checkpoint_and_metrics_json_say_how_the_temperature_was_decided(run, tmp_path):
    best = run / "run" / "best.pt"
    artifact = load_checkpoint(best).artifact
    record = artifact.calibration
    assert record is not None and record["temperature"] == artifact.temperature and record["reason"]
    assert set(record) >= {"fitted", "n_rows", "n_locations", "cv_log_loss_uncalibrated", "cv_log_loss_calibrated"}
    if not record["fitted"]:
        assert artifact.temperature == 1.0 and record["reason"].startswith("temperature 1 kept")
    result = evaluate_checkpoint(best, run / "features" / "train", out_dir=tmp_path / "eval", progress=False)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["calibration"] == record == result["calibration"]
    log = (run / "run" / "train.log").read_text()
    assert f"calibration: {record['reason']}" in log


def test_a_decision_round_trips_through_the_checkpoint(tmp_path):
    probs = np.full((120, 3), 1 / 3)
    decision = decide_temperature(probs, np.arange(120) % 3, np.arange(120) % 4)
    folder = write_random_folder(tmp_path / "f", (20,), FeatureConfig(image_size=32))
    path = write_test_checkpoint(tmp_path / "a.pt", folder, modality="audio")
    old = load_checkpoint(path).artifact
    assert old.calibration is None  # a checkpoint written without the record loads as before
    save_checkpoint(path, dataclasses.replace(old, calibration=decision.to_dict()))
    assert load_checkpoint(path).artifact.calibration == decision.to_dict()


def test_avsc_calibrate_writes_its_own_record_over_trainings(tmp_path):
    from avsc_pipeline.evaluation.checkpoint_temperature import calibrate

    folder = write_random_folder(tmp_path / "f", (30,), FeatureConfig(image_size=32))
    path = write_test_checkpoint(tmp_path / "a.pt", folder, modality="audio")
    stale = {"temperature": 1.0, "fitted": False, "reason": "temperature 1 kept: training's"}
    save_checkpoint(path, dataclasses.replace(load_checkpoint(path).artifact, calibration=stale))
    result = calibrate([path], folder, tmp_path / "b.pt", device="cpu")
    record = load_checkpoint(tmp_path / "b.pt").artifact.calibration
    assert record["temperature"] == result.temperature and record["n_rows"] == 30
    assert record["reason"].startswith(f"temperature {result.temperature:.3g} fitted by avsc-calibrate on 30 rows")
