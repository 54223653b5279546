"""The Slurm scripts of scripts/slurm/, run with bash as the scheduler would run them, on demo data.

A stand-in `sbatch` runs each submitted script at once (array tasks side by side) with the
variables Slurm sets (SLURM_JOB_ID, SLURM_ARRAY_TASK_ID/COUNT/MIN, SLURM_SUBMIT_DIR, ...); a
stand-in `scontrol` records what it is asked. The training job gets SIGTERM in the middle of its
run, as Slurm sends it before pre-empting a job: it must leave last.pt, requeue itself, and the
requeued run must resume and finish.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from avsc_pipeline.demo import DemoConfig, write_demo_dataset
from avsc_pipeline.corpus.tau import load_tau

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm"
BIN = Path(sys.executable).parent
TASKS = 2

FAKE_SBATCH = """#!{python}
import os, subprocess, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
args = sys.argv[1:]
job = str(1000 + len(list(state.glob("job-*.out"))))
env = dict(os.environ, SLURM_JOB_ID=job, SLURM_SUBMIT_DIR=os.getcwd(), SLURM_CPUS_PER_TASK="1")
tasks = [None]
for arg in args:
    if arg.startswith("--array="):
        low, high = (int(v) for v in arg.split("=", 1)[1].split("-"))
        tasks = list(range(low, high + 1))
        env.update(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_COUNT=str(len(tasks)),
                   SLURM_ARRAY_TASK_MIN=str(low), SLURM_ARRAY_TASK_MAX=str(high))
    elif arg.startswith("--export="):
        env.update(kv.split("=", 1) for kv in arg.split("=", 1)[1].split(",")[1:])
    elif arg.startswith("--dependency=afterok:"):
        # A job runs once the one it depends on succeeded; here that one already ran.
        if not (state / ("ok-" + arg.rsplit(":", 1)[1])).exists():
            sys.exit("dependency " + arg + " not met")
script = args[-1]
with open(state / "sbatch.log", "a") as log:
    log.write(" ".join(args) + "\\n")
with open(state / ("job-" + job + ".out"), "w") as out:
    runs = [subprocess.Popen(["bash", script], env=dict(env, **({{}} if t is None else {{"SLURM_ARRAY_TASK_ID": str(t)}})),
                             stdout=out, stderr=subprocess.STDOUT) for t in tasks]
    codes = [run.wait() for run in runs]
if any(codes):
    sys.exit("job " + job + " failed: " + str(codes))
(state / ("ok-" + job)).touch()
print(job + ";cluster")
"""

FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE_SLURM_DIR/scontrol.log"
"""


def _tools(folder: Path) -> Dict[str, str]:
    """The stand-in scheduler commands and the environment every job gets."""
    folder.mkdir(parents=True, exist_ok=True)
    sbatch, scontrol = folder / "sbatch", folder / "scontrol"
    sbatch.write_text(FAKE_SBATCH.format(python=sys.executable))
    scontrol.write_text(FAKE_SCONTROL)
    for tool in (sbatch, scontrol):
        tool.chmod(0o755)
    return {"SBATCH": str(sbatch), "SCONTROL": str(scontrol), "FAKE_SLURM_DIR": str(folder), "BIN": str(BIN)}


@pytest.fixture(scope="module")
def features_job(tmp_path_factory):
    """Demo data (2 clips per class of 2 s), then stage one through submit_features.sh."""
    if not (BIN / "avsc-train").exists():
        pytest.skip(f"the package's commands are not installed beside {sys.executable}")
    root = tmp_path_factory.mktemp("slurm")
    data = write_demo_dataset(root / "demo", DemoConfig(clips_per_class=2, duration=2.0), progress=False)
    env = dict(os.environ, **_tools(root / "slurm"), DATA=str(data), FEATURES=str(root / "features"),
               EXTRACT_ARGS="--shard-size 6", AUGMENT_ARGS="--ops noise --shard-size 6")
    result = subprocess.run(["bash", str(SCRIPTS / "submit_features.sh"), str(TASKS)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text() for p in sorted((root / "slurm").glob("job-*.out")))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    return root, data, result.stdout, logs


def test_feature_jobs_fill_index_and_verify_every_split(features_job):
    root, data, out, logs = features_job
    submitted = (root / "slurm" / "sbatch.log").read_text().splitlines()
    assert [line.split()[-1].rsplit("/", 1)[1] for line in submitted] == [
        "extract.sbatch", "index.sbatch", "extract.sbatch", "index.sbatch"]
    assert all(f"--dependency=afterok:{1000 + i}" in submitted[i + 1] for i in range(3))
    assert all(f"part {i}/{TASKS}" in logs for i in range(1, TASKS + 1)) and "1 folder(s) OK" not in logs
    assert "augment part 2/2" in logs and "4 folder(s) OK" in logs
    import json

    for split in ("train", "evaluate", "test"):
        index = json.loads((root / "features" / split / "index.json").read_text())
        # Every clip of the split's list, 2 one-second segments each, whichever task wrote it.
        assert index["rows"] == 2 * len(load_tau(data, split)) and len(index["shards"]) >= TASKS
    aug = json.loads((root / "features" / "train-aug" / "index.json").read_text())
    assert aug["rows"] == 2 * len(load_tau(data, "train"))  # one noise copy per clip


def test_extract_job_refuses_to_run_outside_an_array(tmp_path):
    result = subprocess.run(["bash", str(SCRIPTS / "extract.sbatch")], cwd=REPO, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, timeout=60)
    assert result.returncode != 0 and "run it as an array job" in result.stderr


def _metric_rows(run: Path):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 600.0) -> None:
    """Until `path` exists (the event), failing if the job ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the job ended ({proc.returncode}) before {path.name} appeared:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout} s:\n{log.read_text()}")
        time.sleep(0.05)


def _train_env(root: Path, features: Path, epochs: int, **extra: str) -> Dict[str, str]:
    # A view of this environment whose make stamp is fresh, so `make train` never reinstalls.
    venv = root / "venv"
    if not venv.exists():
        venv.mkdir()
        (venv / "bin").symlink_to(BIN)
        (venv / ".installed").touch()
    args = ("--config configs/demo.yaml --config configs/demo/audio.yaml --set loader.num_workers=0 "
            f"--set train.epochs={epochs} --no-progress")
    return dict(os.environ, **_tools(root / "slurm"), SLURM_JOB_ID="4242", SLURM_GPUS_ON_NODE="1",
                SLURM_SUBMIT_DIR=str(REPO), VENV=str(venv), TORCHRUN=str(BIN / "torchrun"),
                FEATURES=str(features), RUN=str(root / "runs"), STEPS="audio", DEVICE="cpu", TRAIN_ARGS=args, **extra)


def test_train_job_requeues_on_sigterm_and_the_requeued_job_resumes(features_job, tmp_path):
    root, _, _, _ = features_job
    run, log = tmp_path / "runs" / "audio", tmp_path / "job.out"
    features = root / "features"
    with open(log, "w") as out:
        job = subprocess.Popen(["bash", str(SCRIPTS / "train.sbatch")], cwd=REPO, stdout=out,
                               stderr=subprocess.STDOUT, env=_train_env(tmp_path, features, epochs=200))
        _wait_for(run / "metrics.csv", job, log)  # an epoch is done: training is under way
        job.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 sends the batch shell
        assert job.wait(timeout=300) == 0, log.read_text()
    assert (tmp_path / "slurm" / "scontrol.log").read_text() == "requeue 4242\n"
    assert "stopped by signal 15" in (run / "train.log").read_text() and (run / "last.pt").is_file()
    done = len(_metric_rows(run))
    assert 1 <= done < 200

    # The requeued job: the same script again; one more epoch than were finished is enough here.
    again = subprocess.run(["bash", str(SCRIPTS / "train.sbatch")], cwd=REPO, capture_output=True, text=True,
                           env=_train_env(tmp_path, features, epochs=done + 1, SLURM_RESTART_COUNT="1"),
                           timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "restart 1" in again.stdout and "--nproc_per_node 1" in again.stdout
    assert "resumed" in (run / "train.log").read_text()
    assert [int(r["epoch"]) for r in _metric_rows(run)] == list(range(1, done + 2))
    assert (run / "best.pt").is_file() and (run / "eval" / "evaluate" / "metrics.json").is_file()
    assert (tmp_path / "runs" / "report" / "report.md").is_file()
    assert (tmp_path / "slurm" / "scontrol.log").read_text() == "requeue 4242\n"  # no second requeue
