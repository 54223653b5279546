"""Pre-emption keeps the epoch: SIGTERM (or Ctrl-C's SIGINT) to a whole process group, the
loader's workers included (as a scheduler or `scripts/slurm/train.sbatch` sends it), mid-epoch.

Under `avsc-train`, `make train` and the sbatch script's harness, with 2 loader workers: the run
stops after its current step with exit status 143 (128 + SIGTERM), writes a mid-epoch last.pt,
prints no traceback, leaves no process behind, and a rerun resumes it and finishes. Each test
waits for an event (the log line "epoch 1/N started", a process group that has emptied), never
for a number of seconds.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from avsc_pipeline.models.checkpoint import load_checkpoint
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import write_random_shard

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FEATURES = FeatureConfig(n_mels=32, image_size=32)
EPOCHS = 1
# A tiny audio model, 2 loader workers, batches of 2: an epoch of about 90 steps, so that the
# signal always lands inside epoch 1.
SETTINGS = ["model.modality=audio", "model.audio_widths=[8,8,8]", "model.video=small_cnn", "model.video_weights=null",
            "loader.batch_size=2", "loader.num_workers=2", "loader.persistent_workers=true",
            "train.optimizer=adam", "train.lr=0.003", "train.weight_decay=0", "train.scheduler=none",
            f"train.epochs={EPOCHS}", "batch_augment.mixup_fraction=0"]
SETS = [arg for setting in SETTINGS for arg in ("--set", setting)]
TIMEOUT = 600.0


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """`train` (200 random rows, 20 clips) and `evaluate` (40 rows) of the small feature config."""
    if not (BIN / "avsc-train").exists():
        pytest.skip(f"the package's commands are not installed beside {sys.executable}")
    root = tmp_path_factory.mktemp("preemption") / "features"
    for split, rows, seed in (("train", 200, 0), ("evaluate", 40, 1)):
        write_random_shard(root / split / "shard-00000.h5", rows, FEATURES, seed=seed, identifiers=3)
        build_index(root / split)
    return root


def _wait_until(condition: Callable[[], bool], proc: subprocess.Popen, what: str, output: Path) -> None:
    """Until `condition()` holds (the event), failing if `proc` ends first or nothing happens in
    TIMEOUT seconds (a hung run, not a pace)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended ({proc.returncode}) before {what}:\n{output.read_text()[-5000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} in {TIMEOUT} s:\n{output.read_text()[-5000:]}")
        time.sleep(0.02)


def _epoch_started(log: Path) -> Callable[[], bool]:
    return lambda: log.is_file() and f"epoch 1/{EPOCHS} started" in log.read_text()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_group_to_empty(pgid: int) -> None:
    """The event: no process of the group is left (the loader's workers included)."""
    deadline = time.monotonic() + TIMEOUT
    while _group_alive(pgid):
        assert time.monotonic() < deadline, f"processes of group {pgid} outlived the run"
        time.sleep(0.02)


def _exit_status(returncode: int) -> int:
    """A shell's `$?` for a Popen return code (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _assert_stopped_mid_epoch(run: Path, output: str, signum: int = signal.SIGTERM) -> None:
    assert "Traceback" not in output, output[-5000:]
    assert f"stopped by signal {int(signum)}" in (run / "train.log").read_text()
    state = load_checkpoint(run / "last.pt").resume
    assert state.epoch == 0 and state.epoch_batches > 0, (state.epoch, state.epoch_batches)


def _epochs_done(run: Path) -> List[int]:
    with open(run / "metrics.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def _fake_venv(root: Path) -> Path:
    """A view of this environment whose make stamp is fresh, so that `make` never reinstalls."""
    venv = root / "venv"
    venv.mkdir()
    (venv / "bin").symlink_to(BIN)
    (venv / ".installed").touch()
    return venv


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_avsc_train_stops_mid_epoch_on_a_signal_to_its_process_group(features, tmp_path, signum):
    run, output = tmp_path / "run", tmp_path / "stderr.txt"
    command = [str(BIN / "avsc-train"), str(features), str(run), "--no-progress", "--device", "cpu", *SETS]
    with open(output, "w") as err:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        _wait_until(_epoch_started(run / "train.log"), proc, "epoch 1 started", output)
        os.killpg(proc.pid, signum)  # the process group: the main process and its loader workers
        assert proc.wait(timeout=TIMEOUT) == 128 + signum, output.read_text()[-5000:]
    _wait_for_group_to_empty(proc.pid)
    _assert_stopped_mid_epoch(run, output.read_text(), signum)
    assert output.read_text().rstrip().endswith(f"{run}: stopped by signal {int(signum)}; continue with --resume")
    if signum != signal.SIGTERM:
        return
    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resumed" in (run / "train.log").read_text() and _epochs_done(run) == list(range(1, EPOCHS + 1))


def _make_env(tmp_path: Path, features: Path) -> Dict[str, str]:
    # The recipe's own config has a features: section for the full-size features; this one has
    # none (the step's configs/steps/audio.yaml still layers on top, then TRAIN_ARGS).
    config = tmp_path / "tiny.yaml"
    config.write_text("model:\n  video_weights: null\n")
    return dict(os.environ, VENV=str(_fake_venv(tmp_path)), FEATURES=str(features), RUN=str(tmp_path / "runs"),
                CONFIG=str(config), STEPS="audio", DEVICE="cpu", TRAIN_ARGS=" ".join(["--no-progress", *SETS]))


def test_make_train_stops_mid_epoch_on_sigterm_to_its_process_group(features, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    env, output = _make_env(tmp_path, features), tmp_path / "make.txt"
    run = tmp_path / "runs" / "audio"
    with open(output, "w") as out:
        proc = subprocess.Popen(["make", "--no-print-directory", "train"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until(_epoch_started(run / "train.log"), proc, "epoch 1 started", output)
        os.killpg(proc.pid, signal.SIGTERM)
        status = _exit_status(proc.wait(timeout=TIMEOUT))
    _wait_for_group_to_empty(proc.pid)
    assert status == 143, output.read_text()[-5000:]
    _assert_stopped_mid_epoch(run, output.read_text())
    assert not (run / "eval").exists()  # nothing scored after the stop

    again = subprocess.run(["make", "--no-print-directory", "train"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert "resumed" in (run / "train.log").read_text() and _epochs_done(run) == list(range(1, EPOCHS + 1))
    assert (run / "eval" / "evaluate" / "metrics.json").is_file()


FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE_SLURM_DIR/scontrol.log"
"""


def _sbatch_stopped_mid_epoch(env, run: Path, output: Path) -> int:
    """Run scripts/slurm/train.sbatch, SIGTERM its process group once epoch 1 has started (as
    Slurm's warning signal does); the script's exit status."""
    with open(output, "w") as out:
        job = subprocess.Popen(["bash", str(REPO / "scripts" / "slurm" / "train.sbatch")], cwd=REPO, env=env,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until(_epoch_started(run / "train.log"), job, "epoch 1 started", output)
        os.killpg(job.pid, signal.SIGTERM)
        return job.wait(timeout=TIMEOUT)


def test_the_sbatch_script_stops_mid_epoch_and_requeues(features, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    (slurm / "scontrol").write_text(FAKE_SCONTROL)
    (slurm / "scontrol").chmod(0o755)
    env = dict(_make_env(tmp_path, features), SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=str(REPO),
               SLURM_GPUS_ON_NODE="1", SCONTROL=str(slurm / "scontrol"), FAKE_SLURM_DIR=str(slurm),
               TORCHRUN=f"{sys.executable} -m avsc_pipeline_cli.torchrun", OMP_NUM_THREADS="1")
    run, output = tmp_path / "runs" / "audio", tmp_path / "job.out"
    # What --signal=B:TERM@120 sends: the batch shell; it signals make's whole process group
    # (torchrun, avsc-train and its loader workers) and waits for it.
    assert _sbatch_stopped_mid_epoch(env, run, output) == 0, output.read_text()[-5000:]  # the requeue's status
    _assert_stopped_mid_epoch(run, output.read_text())
    assert (slurm / "scontrol.log").read_text() == "requeue 4242\n"

    # The requeued job: the same script again, which resumes and finishes.
    again = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "train.sbatch")], cwd=REPO,
                           env=dict(env, SLURM_RESTART_COUNT="1"), capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert "Traceback" not in again.stdout + again.stderr
    assert _epochs_done(run) == list(range(1, EPOCHS + 1))
    assert (slurm / "scontrol.log").read_text() == "requeue 4242\n"  # no second requeue


def test_the_sbatch_script_outside_slurm_exits_143(features, tmp_path):
    """Without SLURM_JOB_ID (a plain `bash scripts/slurm/train.sbatch`) there is nothing to requeue:
    the script exits 143, as the run it stopped."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    env = {k: v for k, v in _make_env(tmp_path, features).items() if not k.startswith("SLURM_")}
    env.update(LAUNCH="")  # one plain process
    run, output = tmp_path / "runs" / "audio", tmp_path / "job.out"
    assert _sbatch_stopped_mid_epoch(env, run, output) == 143, output.read_text()[-5000:]
    _assert_stopped_mid_epoch(run, output.read_text())
