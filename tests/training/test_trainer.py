"""The trainer at toy size: loss goes down, run folders, checkpoints, resume, freezing, bad input."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.models.checkpoint import load_checkpoint
from avsc_pipeline.sections import load_recipe
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import write_random_shard
from avsc_pipeline.training.run import train_run
from avsc_pipeline_cli.train import main as train_main

ROOT = Path(__file__).resolve().parents[2]
FEATURES = FeatureConfig(n_mels=32, image_size=32)
TINY = ["model.audio_widths=[8, 8, 8]", "model.video=small_cnn", "model.video_weights=null",
        "model.fusion_hidden=[16]", "loader.batch_size=8", "loader.num_workers=0", "loader.audio_stats=stats.json",
        "train.optimizer=adam", "train.lr=0.003", "train.weight_decay=0", "train.scheduler=none"]
NO_AUGMENT = ["batch_augment.spec_augment=false", "batch_augment.channel_swap_p=0", "batch_augment.video_ops=[]",
              "batch_augment.mixup_fraction=0"]


def make_features(root: Path, rows: int = 200, seed: int = 0, classes=None) -> Path:
    """A features folder with one random train shard of `rows` rows (10 per clip)."""
    import h5py

    kwargs = {"classes": classes} if classes else {}
    path = write_random_shard(root / "train" / "shard-00000.h5", rows, FEATURES, seed=seed, identifiers=3, **kwargs)
    with h5py.File(path, "r+") as handle:  # learnable: a band per class in the audio, a hue in the frames
        labels = handle["label"][:]
        audio, video = handle["audio"][:], handle["video"][:]
        for i, label in enumerate(labels):
            audio[i, :, 3 * label: 3 * label + 3] += 4.0
            video[i, :, label % 3] //= 4
        handle["audio"][:] = audio
        handle["video"][:] = video
    build_index(root / "train")
    return root


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_features(tmp_path_factory.mktemp("features"))


def sections(*overrides: str, configs=()):
    return load_recipe(list(configs) or None, TINY + list(overrides))


def metrics_rows(run: Path):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def model_state(path: Path):
    return load_checkpoint(path).artifact.weights


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def audio_run(features, tmp_path_factory):
    """A 4-epoch audio run without augmentation: `(run folder, train_run's row)`."""
    run = tmp_path_factory.mktemp("audio-run") / "run"
    row = train_run(features, run, sections("model.modality=audio", "train.epochs=4", *NO_AUGMENT), progress=False)
    return run, row


def test_training_lowers_the_loss(audio_run):
    rows = metrics_rows(audio_run[0])
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.9 * losses[0] and losses == sorted(losses, reverse=True), losses


def test_the_run_folder_holds_every_file(audio_run):
    for name in ("config.yaml", "metrics.csv", "curves.png", "train.log", "last.pt", "best.pt"):
        assert (audio_run[0] / name).is_file(), name


def test_the_checkpoint_holds_the_model_and_the_resume_state(audio_run):
    ckpt = load_checkpoint(audio_run[0] / "last.pt")
    artifact, state = ckpt.artifact, ckpt.resume
    assert artifact.epoch == 4 and artifact.classes[0] == "airport" and artifact.modality == "audio"
    assert artifact.recipe.train.epochs == 4 and artifact.recipe.features == FEATURES
    assert set(state.rng["0"]) >= {"torch", "numpy", "python"} and state.optimizer and state.scheduler


def test_metrics_rows_hold_validation_data_wait_best_and_lr(audio_run):
    run, row = audio_run
    rows = metrics_rows(run)
    assert row["val_log_loss"] is not None and 0 <= float(rows[-1]["data_wait_fraction"]) <= 1
    assert sum(int(r["best"]) for r in rows) == 1 and float(rows[0]["lr"]) == float(rows[0]["lr_last"]) == 0.003


def test_config_yaml_records_what_the_run_read(audio_run):
    import yaml

    saved = load_recipe(audio_run[0] / "config.yaml")
    assert saved.train.epochs == 4 and saved.features == FEATURES  # the shards' features, not the defaults
    assert "offline_augment" not in yaml.safe_load((audio_run[0] / "config.yaml").read_text())  # no train-aug


def assert_validation_is_avsc_eval(features: Path, run: Path, rel: float = 1e-9) -> None:
    """The last epoch's validation figures in metrics.csv equal evaluation's on the same rows
    (`rel`: float32 convolutions round differently in batches of other rows)."""
    from avsc_pipeline.dataio.dataset import ShardDataset
    from avsc_pipeline.dataio.training_input import build_training_input
    from avsc_pipeline.evaluation.metrics import score
    from avsc_pipeline.evaluation.loading import load_scorer
    from avsc_pipeline.evaluation.scoring import score_rows

    last = metrics_rows(run)[-1]
    artifact = load_checkpoint(run / "last.pt").artifact
    loader = artifact.recipe.loader
    inputs = build_training_input(features, loader, None, "cpu", frame_norm=((0.5,) * 3, (0.5,) * 3))
    rows = inputs.split.validation
    inputs.close()
    scorer, _ = load_scorer(run / "last.pt", "cpu", calibrated=False)  # metrics.csv is uncalibrated
    with ShardDataset([features / "train"]) as dataset:
        probs = score_rows(dataset, scorer, loader, rows=rows)
        expected = score(dataset.labels[rows], probs, artifact.classes)
    assert float(last["val_accuracy"]) == pytest.approx(expected["accuracy"], abs=1e-12)
    assert float(last["val_log_loss"]) == pytest.approx(expected["log_loss"], rel=rel)


def test_validation_figures_equal_avsc_eval_on_the_same_rows(features, tmp_path):
    run = tmp_path / "run"
    train_run(features, run, sections("model.modality=joint", "train.epochs=2", "batch_augment.mixup_fraction=0.5"),
              progress=False)
    assert_validation_is_avsc_eval(features, run)
    # The final checkpoint carries a temperature fitted on the validation rows: never worse there.
    artifact = load_checkpoint(run / "last.pt").artifact
    assert artifact.temperature > 0 and (artifact.temperature != 1.0 or float(metrics_rows(run)[-1]["val_log_loss"]) < 1)


def wait_for(condition, process, timeout: float = 120.0) -> None:
    """Poll `condition` until it holds; fail at once if `process` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended (code {process.returncode}) before the event"
        assert time.monotonic() < deadline, "the event did not happen in time"
        time.sleep(0.02)


def _train_command(features: Path, run: Path, *overrides: str):
    args = [sys.executable, "-m", "avsc_pipeline_cli.train", str(features), str(run), "--no-progress"]
    for text in TINY + list(overrides):
        args += ["--set", text]
    return args


RESUMABLE = ("model.modality=joint", "train.epochs=3", "train.deterministic=true", "batch_augment.mixup_fraction=0.5")


@pytest.mark.slow
def test_sigkill_after_an_epoch_then_resume_ends_with_the_same_weights(features, tmp_path):
    whole = tmp_path / "whole"
    train_run(features, whole, sections(*RESUMABLE), progress=False)
    run = tmp_path / "killed"
    process = subprocess.Popen(_train_command(features, run, *RESUMABLE), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: (run / "metrics.csv").is_file(), process)  # the event: an epoch and its last.pt
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = load_checkpoint(run / "last.pt").resume.epoch
    assert done >= 1, "the run should have been killed after an epoch"
    train_run(features, run, sections(*RESUMABLE), resume=True, progress=False)
    assert_same_state(model_state(run / "last.pt"), model_state(whole / "last.pt"))
    assert [r["epoch"] for r in metrics_rows(run)] == ["1", "2", "3"]


@pytest.mark.slow
def test_sigterm_mid_epoch_writes_last_pt_and_resume_is_exact(features, tmp_path):
    overrides = RESUMABLE[:1] + ("train.epochs=2",) + RESUMABLE[2:] + ("loader.batch_size=2",)
    whole = tmp_path / "whole"
    train_run(features, whole, sections(*overrides), progress=False)
    run = tmp_path / "stopped"
    process = subprocess.Popen(_train_command(features, run, *overrides), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    # The event: the loop has started with its signal handlers installed (logged by `fit`).
    wait_for(lambda: (run / "train.log").is_file() and "epoch 1/2 started" in (run / "train.log").read_text(),
             process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    state = load_checkpoint(run / "last.pt").resume
    assert state.epoch < 2 and (state.epoch > 0 or state.epoch_batches > 0)
    train_run(features, run, sections(*overrides), resume=True, progress=False)
    assert_same_state(model_state(run / "last.pt"), model_state(whole / "last.pt"))


def test_a_frozen_extractor_is_cached_and_stays_bit_identical(features, tmp_path, caplog):
    first = tmp_path / "first"
    train_run(features, first, sections("model.modality=joint", "train.epochs=1"), progress=False)
    second = tmp_path / "second"
    caplog.set_level("INFO", logger="avsc_pipeline")
    train_run(features, second, sections("model.modality=joint", "train.epochs=2", "train.freeze_video=true",
                                         f"train.init_from={first / 'last.pt'}", "batch_augment.video_ops=[]",
                                         "batch_augment.mixup_fraction=0"), progress=False)
    assert "frozen video extractor: embeddings of" in caplog.text
    before, after = model_state(first / "last.pt"), model_state(second / "last.pt")
    video = [k for k in before if k.startswith("video.")]
    assert any("running_mean" in k for k in video)
    for key in video:
        assert torch.equal(before[key], after[key]), key
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith(("audio.", "head.")))
    means = load_checkpoint(second / "last.pt").artifact.embedding_means
    assert means["audio"].shape == (10,) and means["video"].shape == (64,)


@pytest.mark.slow
def test_two_gloo_processes_through_torchrun(features, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "ddp"
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "--no-python",
               str(Path(sys.executable).with_name("avsc-train")), str(features), str(run), "--no-progress",
               "--device", "cpu"]
    for text in TINY + ["model.modality=audio", "train.epochs=2"]:
        command += ["--set", text]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 of 2" in result.stderr and len(metrics_rows(run)) == 2
    state = load_checkpoint(run / "last.pt").resume
    assert state.epoch == 2 and set(state.rng) == {"0", "1"} and set(state.preparer) == {"0", "1"}
    # Each rank scored half the validation rows; the gathered figures are one process's.
    assert_validation_is_avsc_eval(features, run, rel=1e-6)


@pytest.mark.slow
def test_torchrun_fine_tunes_a_block3_fcnn_without_unused_parameters(features, tmp_path):
    """`audio_embedding: block3` leaves the FCNN's class head out of the joint forward; DDP used to
    fail at step 2 ("Expected to have finished reduction in the prior iteration")."""
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "ddp"
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "--no-python",
               str(Path(sys.executable).with_name("avsc-train")), str(features), str(run), "--no-progress",
               "--device", "cpu"]
    for text in TINY + ["model.modality=joint", "model.audio_embedding=block3", "train.epochs=1",
                        "batch_augment.mixup_fraction=0"]:
        command += ["--set", text]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(run / "last.pt").resume.step >= 2


@pytest.mark.slow
def test_the_shipped_demo_configs_train_each_step(features, tmp_path):
    import yaml

    # The shipped paper.yaml names the paper's feature definition; these toy shards have another.
    recipe = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    recipe.pop("features")
    base = [tmp_path / "paper.yaml"]
    base[0].write_text(yaml.safe_dump(recipe))
    runs = {}
    for step in ("audio", "video", "joint"):
        configs = base + [ROOT / "configs" / "steps" / f"{step}.yaml", ROOT / "configs" / "demo.yaml",
                          ROOT / "configs" / "demo" / f"{step}.yaml"]
        extra = ["train.epochs=1", "loader.num_workers=0", "model.audio_widths=[8, 8, 8]"]
        if step == "joint":
            extra.append(f"train.init_from={runs['audio'] / 'best.pt'}")
        runs[step] = tmp_path / step
        train_run(features, runs[step], load_recipe(configs, extra), progress=False)
        assert load_checkpoint(runs[step] / "best.pt").artifact.modality == step


# -- bad input: one line naming the file, non-zero exit, nothing overwritten -----------------------

def _invoke(*args):
    return CliRunner().invoke(train_main, [str(a) for a in args] + ["--no-progress"])


def _set(*overrides):
    return [x for text in TINY + list(overrides) for x in ("--set", text)]


def test_bad_input_is_refused_with_one_line(features, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _invoke(empty, tmp_path / "r0", *_set())
    assert result.exit_code != 0 and "expected stage-one shards" in result.output and "Traceback" not in result.output

    mixed = make_features(tmp_path / "mixed")
    write_random_shard(mixed / "train-aug" / "shard-00000.h5", 20, FEATURES, seed=1, classes=["a", "b"])
    build_index(mixed / "train-aug")
    result = _invoke(mixed, tmp_path / "r1", *_set())
    assert result.exit_code != 0 and "class" in result.output.lower()

    result = _invoke(features, tmp_path / "r2", *_set("train.init_from=/nonexistent/best.pt"))
    assert result.exit_code != 0 and "/nonexistent/best.pt" in result.output
    result = _invoke(features, tmp_path / "r3", *_set("model.video=resnet9000"))
    assert result.exit_code != 0 and "resnet9000" in result.output
    result = _invoke(features, tmp_path / "r4", *_set("model.video=resnet18", "model.video_weights=/no/such.pth"))
    assert result.exit_code != 0 and "/no/such.pth" in result.output
    result = _invoke(features, tmp_path / "r5", *_set("trian.lr=1"))
    assert result.exit_code != 0 and "trian" in result.output
    for name in ("r1", "r2", "r3", "r4", "r5"):
        assert not (tmp_path / name / "config.yaml").exists(), name


def test_run_folder_refusals(features, tmp_path):
    run = tmp_path / "run"
    assert _invoke(features, run, *_set("model.modality=audio", "train.epochs=1")).exit_code == 0
    snapshot = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    other = _invoke(features, run, *_set("model.modality=audio", "train.epochs=1", "train.lr=0.1"))
    assert other.exit_code != 0 and "train.lr" in other.output
    again = _invoke(features, run, *_set("model.modality=audio", "train.epochs=1"))
    assert again.exit_code != 0 and "--resume" in again.output
    last = run / "last.pt"
    last.write_bytes(snapshot["last.pt"][: len(snapshot["last.pt"]) // 2])
    truncated = _invoke(features, run, "--resume", *_set("model.modality=audio", "train.epochs=1"))
    assert truncated.exit_code != 0 and str(last) in truncated.output and "Traceback" not in truncated.output
    assert len(truncated.output.strip().splitlines()) == 1
    last.write_bytes(snapshot["last.pt"])
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == snapshot
    shutil.rmtree(run)


def test_config_values_are_checked_against_their_types(features, tmp_path):
    result = _invoke(features, tmp_path / "r", *_set("train.compile=maybe"))
    assert result.exit_code != 0 and "train.compile" in result.output and "maybe" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    result = _invoke(features, tmp_path / "r", *_set("loader.batch_size=8.5"))
    assert result.exit_code != 0 and "loader.batch_size" in result.output


def test_a_features_override_at_training_time_is_refused(features, tmp_path):
    result = _invoke(features, tmp_path / "r", *_set("features.n_mels=64"))
    assert result.exit_code != 0 and "features come from the shards" in result.output
    paper = ROOT / "configs" / "paper.yaml"
    result = _invoke(features, tmp_path / "r", "--config", paper, *_set())
    assert result.exit_code != 0 and "n_mels" in result.output  # the shards have 32 mel bands


def test_resume_reads_the_run_config_and_may_extend_a_finished_run(features, tmp_path):
    run = tmp_path / "run"
    assert _invoke(features, run, *_set("model.modality=audio", "train.epochs=1")).exit_code == 0
    result = _invoke(features, run, "--resume", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in metrics_rows(run)] == ["1", "2"]
    assert "best.pt (epoch" in result.output and "last epoch 2" in result.output
    refused = _invoke(features, run, "--resume", "--set", "train.lr=0.5")
    assert refused.exit_code != 0 and "train.lr" in refused.output and "--overwrite" not in refused.output


def test_ctrl_c_before_the_loop_is_one_line_and_status_130(features, tmp_path, monkeypatch):
    from avsc_pipeline.training import run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "build_training_input", interrupted)
    result = _invoke(features, tmp_path / "r", *_set())
    assert result.exit_code == 130 and "interrupted" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_joint_model_on_audio_only_shards_says_what_is_missing(tmp_path):
    root = tmp_path / "audio-only"
    write_random_shard(root / "train" / "shard-00000.h5", 40, FEATURES, identifiers=3, with_video=False)
    build_index(root / "train")
    result = _invoke(root, tmp_path / "r", *_set("model.modality=joint"))
    assert result.exit_code != 0 and "no video frames" in result.output and "with_video" not in result.output


def test_lr_columns_are_the_rates_each_epoch_trained_with(features, tmp_path):
    run = tmp_path / "run"
    train_run(features, run, sections("model.modality=audio", "train.epochs=2", "train.scheduler=warm_restarts",
                                      "train.restart_epochs=[1, 2]", "train.min_lr=1e-5", *NO_AUGMENT), progress=False)
    rows = metrics_rows(run)
    for row in rows:  # a warm restart at every epoch: each starts at lr and anneals within it
        assert float(row["lr"]) == pytest.approx(0.003) and float(row["lr_last"]) < 0.003


def test_an_explicit_gpu_index_under_torchrun_is_refused(monkeypatch):
    from avsc_pipeline.training.distributed import join

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        join("cuda:0")


@pytest.mark.slow
def test_a_frozen_cache_built_by_two_ranks_equals_one_process(features, tmp_path):
    """Each rank embeds half the distinct frame pairs and the tables are summed: the video means
    stored in the checkpoint (from the cache) equal a single process's."""
    first = tmp_path / "first"
    train_run(features, first, sections("model.modality=joint", "train.epochs=1"), progress=False)
    frozen = ["model.modality=joint", "train.epochs=1", "train.freeze_video=true", f"train.init_from={first / 'last.pt'}",
              "batch_augment.video_ops=[]", "batch_augment.mixup_fraction=0"]
    single = tmp_path / "single"
    train_run(features, single, sections(*frozen), progress=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "--no-python",
               str(Path(sys.executable).with_name("avsc-train")), str(features), str(tmp_path / "ddp"),
               "--no-progress", "--device", "cpu"]
    for text in TINY + frozen:
        command += ["--set", text]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "frozen video extractor: embeddings of" in result.stderr
    one = load_checkpoint(single / "last.pt").artifact.embedding_means["video"]
    two = load_checkpoint(tmp_path / "ddp" / "last.pt").artifact.embedding_means["video"]
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-6)
