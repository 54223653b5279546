"""Estimates before long work (`avsc-ablations --plan`, `avsc-train --estimate`: a timed probe,
nothing trained that is kept, no checkpoint) and packed runs (`--per-device K`: the table of
training the rows one at a time)."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from avsc_pipeline.sections import load_section
from avsc_pipeline.testing import write_random_folder

ROOT = Path(__file__).resolve().parents[1]
TOY = ("features: {n_mels: 32, image_size: 32}\n"
       "model: {audio_widths: [8, 8, 8], video: small_cnn, video_weights: null, fusion_hidden: [16]}\n"
       "loader: {batch_size: 8, num_workers: 0, audio_stats: stats.json}\n"
       "train: {epochs: 1, lr: 0.003}\n")


def test_the_estimate_table_names_each_run_and_the_total():
    from avsc_pipeline.training.estimate import Estimate, format_estimates

    estimate = Estimate(name="audio", device="cpu", modality="audio", epochs=254, rows_per_epoch=430000,
                        steps_per_epoch=13437, batch_size=32, validation_rows=4000, cached_rows=0,
                        samples_per_s=15000.0, validation_segments_per_s=50000.0, cache_segments_per_s=0.0,
                        warmup_s=3.0, step="graph", seconds=254 * (430000 / 15000 + 4000 / 50000))
    text = format_estimates([estimate], {"joint": "finished, kept"})
    assert "| joint | | | | | | | | finished, kept |" in text
    assert "| audio | audio | graph | 254 | 430000 | 13437 | 15000.0 | 50000 | 2 h 02 min (2.03 h) |" in text
    assert "Total: 2.03 hours (2 h 02 min) on cpu" in text


@pytest.mark.slow
def test_ablations_plan_lists_every_row_with_an_estimate_and_writes_no_checkpoint(tmp_path):
    from avsc_pipeline_cli.ablations import main

    features, run = tmp_path / "features", tmp_path / "run"
    write_random_folder(features / "train", [200, 200])  # the paper's shapes, 10 classes, 4 locations each
    result = CliRunner().invoke(main, ["3", str(features), str(run), "--config", str(ROOT / "configs" / "demo.yaml"),
                                       "--plan", "--probe-steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = {line.split("|")[1].strip(): line for line in result.output.splitlines() if line.startswith("| ")}
    epochs = str(load_section(ROOT / "configs" / "demo.yaml", "train").epochs)  # the demo's toy schedule
    for name in ("audio-plain", "audio-augmented", "none", "audio", "video", "audio-video", "mixup-20", "mixup-50",
                 "mixup-100"):
        cells = [cell.strip() for cell in lines[name].split("|")[1:-1]]
        assert cells[3] == epochs and cells[4] == "300" and float(cells[6]) > 0 and cells[8].endswith(" h)"), cells
    assert "Total:" in result.output and "on cpu" in result.output
    assert not run.exists() or not list(run.rglob("*.pt"))


@pytest.mark.slow
def test_train_estimate_probes_one_run_and_writes_nothing(tmp_path):
    from avsc_pipeline_cli.train import main

    features, run = tmp_path / "features", tmp_path / "run"
    write_random_folder(features / "train", [200, 200])
    toy = tmp_path / "toy.yaml"
    toy.write_text("model: {audio_widths: [8, 8, 8], modality: audio}\nloader: {num_workers: 0}\ntrain: {epochs: 3}\n")
    result = CliRunner().invoke(main, [str(features), str(run), "--config", str(toy), "--estimate", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "| run | audio | eager | 3 | 300 |" in result.output and not run.exists()


@pytest.mark.slow
def test_packed_rows_give_the_table_of_one_at_a_time(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "training"))
    from test_trainer import make_features  # noqa: E402 - the trainer tests' learnable toy shards

    from avsc_pipeline.ablations import run_table

    features = make_features(tmp_path / "features")
    shutil.copytree(features / "train", features / "evaluate")
    toy = tmp_path / "toy.yaml"
    toy.write_text(TOY)
    tables = []
    for per_device in (1, 2):
        run = tmp_path / f"run-{per_device}"
        run_table(3, features, run, rows=["none", "mixup-20"], extra=[toy], device="cpu", per_device=per_device)
        with open(run / "table-3.csv", newline="") as handle:
            tables.append(list(csv.DictReader(handle)))
        assert (run / "audio-plain" / "train.log").is_file() and (run / "table-3" / "mixup-20" / "best.pt").is_file()
    assert [r["accuracy"] for r in tables[0]] == [r["accuracy"] for r in tables[1]]
    assert [r["log_loss"] for r in tables[0]] == [r["log_loss"] for r in tables[1]] and tables[0][0]["log_loss"]
