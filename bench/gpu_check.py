"""The prepared GPU check: stage two and evaluation on a fresh GPU machine, correct and fast.

Needs PyTorch, torchvision and h5py (and the package, `pip install --no-deps -e .`); no data, no
internet, none of librosa, soundfile or PyAV. It writes its own shards of the paper's shapes
(`avsc_pipeline.testing`) into a temporary folder, then, within `--budget-s`, in this order
(what does not fit in the budget left, or what the device cannot do, is recorded as skipped
with the reason):

1. smoke: one epoch of each recipe step (audio, video, joint; DenseNet-161 with random
   weights) through `train_run`, three optimizer steps each, bf16 + channels-last on CUDA:
   one validation and one checkpoint each.
2. validation_vs_eval (correctness): the joint run's validation log loss against avsc-eval's
   scoring of its last.pt on the same rows; should be 0.
3. resume (correctness): `avsc-train` in a subprocess, SIGTERM right after it logs "epoch 1/2
   started", exit code 128+15 and a mid-epoch last.pt, then `--resume` finishes both epochs.
4. host_syncs: host synchronizations per training step (`torch.cuda.set_sync_debug_mode`) of
   each model, and of the models with video before the fix (`VideoRandAugment.masked = False`).
5. throughput: samples/s of the trainer's step (`Trainer._step` on the loader's batches)
   against a bare forward-backward-step of the same model on tensors already on the device
   (= efficiency), for the joint model and the audio step, float32, bf16, bf16 + channels-last
   (CL), + torch.compile and + CUDA graphs (compile_mode reduce-overhead), batch 32 first,
   then 64 and 128, compilation last; GPU busy fraction (`torch.profiler`, 20 steps) at batch
   32; peak GPU memory; data wait (share of the step time in `next(loader)`).
6. cache and avsc_eval: the embedding cache (`compute_embeddings`) and avsc-eval's scoring in
   segments/s, each against a bare forward of the same model.
7. loader: ms per batch of the loader alone and of the pinned copy, and the joint step's data
   wait, with 2 and 6 workers.
8. two_processes: two audio-step processes sharing the device against one.

Targets (one H200, bf16 + CL, batch 32): efficiency >= 0.85, data wait < 5%, avsc-eval >= 0.8x
a bare forward, zero host synchronizations in a training step outside logging. They are
reported, not enforced (nor judged on a CPU): the exit code is 1 only when a correctness check
fails (also: librosa, soundfile or av imported). The check draws no figures (matplotlib is kept
out of its process, as on a bare GPU machine, so avsc-eval's scoring is timed without its files).

Writes OUT/gpu_check.json and OUT/gpu_check.md and prints the table. `--device cpu --quick`
runs the same code at tiny sizes in about a minute (the test suite's run, tests/test_gpu_check.py).

Run: python bench/gpu_check.py --out runs/gpu-check [--device auto] [--budget-s 420] [--quick]
     [--repeat 1] [--threads N]   (make gpu-check OUT=DIR)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

import gpu_check_parts as parts
from avsc_pipeline.sections.loading import LoaderConfig
from avsc_pipeline.dataio.training_input import build_training_input
from gpu_check_parts import ROOT, STEP_CONFIGS, Setup, fmt, one_line, row

MEDIA_MODULES = ("librosa", "soundfile", "av")
# What stage two and evaluation import beyond torch, torchvision and h5py (matplotlib only for
# figures), listed so that a bare machine's gaps show at the top of the report.
RUNTIME_MODULES = ("numpy", "h5py", "torchvision", "click", "tqdm", "yaml", "scipy", "matplotlib")
CORRECTNESS = ("validation_vs_eval", "resume")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for the whole check")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few steps (the test suite's run)")
    parser.add_argument("--repeat", type=int, default=1, help="timed repetitions per figure (the best counts)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 with --quick on the CPU, where two OpenMP threads on a "
                             "shared 2-core machine wait on each other and figures swing by 10x; else torch's)")
    # The process of the two_processes measurement (started by the check itself).
    parser.add_argument("--worker", choices=["audio-step"], help=argparse.SUPPRESS)
    parser.add_argument("--features", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and args.out is None:
        parser.error("expected --out DIR")
    if args.budget_s <= 0 or args.repeat < 1 or (args.threads or 0) < 0:
        parser.error(f"expected --budget-s > 0, --repeat >= 1 and --threads >= 0, got {args.budget_s}, "
                     f"{args.repeat} and {args.threads}")
    return args


def make_setup(args: argparse.Namespace, work: Path, features: Optional[Path] = None) -> Setup:
    from avsc_pipeline.devices import pick_device

    quick = args.quick
    device = pick_device(args.device)
    threads = args.threads if args.threads is not None else int(quick and device.type == "cpu")
    if threads:
        torch.set_num_threads(threads)
    return Setup(
        device=device, quick=quick, features=features or work / "features",
        smoke=work / "smoke-features", batch=8 if quick else 32, batches=(4, 8) if quick else (32, 64, 128),
        workers=1 if quick else 2, worker_counts=(1, 2) if quick else (2, 6), steps=4 if quick else 20,
        warmup=1 if quick else 3, repeat=args.repeat, deadline=time.monotonic() + args.budget_s, work=work,
        threads=threads,
    )


# -- data and environment -------------------------------------------------------------------------


def write_data(setup: Setup) -> Dict[str, Any]:
    """The speed folder (`train`: 4 shards, `train-aug` referring to it) and the smoke folder
    (`train`: two shards whose locations give each class one training and one validation
    location: three training batches, as many validation rows)."""
    from avsc_pipeline.sections.features import FeatureConfig
    from avsc_pipeline.testing import write_augmented_folder, write_random_folder

    config = FeatureConfig(n_mels=32, image_size=32) if setup.quick else FeatureConfig()
    speed, smoke = (40, 30) if setup.quick else (320, 100)
    started = time.perf_counter()
    write_random_folder(setup.features / "train", [speed] * 4, config)
    write_augmented_folder(setup.features / "train-aug", setup.features / "train", config, rows=speed // 2)
    write_random_folder(setup.smoke / "train", [smoke] * 2, config)
    size, seconds = sum(p.stat().st_size for p in setup.work.rglob("*.h5")) / 1e6, time.perf_counter() - started
    return {"audio_shape": list(config.audio_shape), "video_shape": list(config.video_shape),
            "train_rows": 4 * speed, "augmented_rows": speed // 2, "smoke_rows": 2 * smoke, "mb": size,
            "rows": [row("shards written (MB)", size,
                         note=f"audio {config.audio_shape}, frames {config.video_shape}, {4 * speed} + "
                              f"{speed // 2} augmented + {2 * smoke} smoke rows, {seconds:.1f} s")]}


def environment(setup: Setup) -> Dict[str, Any]:
    """Versions, the device, and which runtime modules this machine lacks."""
    missing = [name for name in RUNTIME_MODULES if importlib.util.find_spec(name) is None]
    out: Dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "device": str(setup.device), "missing_modules": missing}
    if setup.cuda:
        out.update(name=torch.cuda.get_device_name(setup.device), cuda=torch.version.cuda,
                   bf16=torch.cuda.is_bf16_supported())
    name = out.get("name", "CPU")
    out["rows"] = [row("device", name, note=f"torch {torch.__version__}, missing: {', '.join(missing) or 'none'}")]
    return out


# -- stage two through its own entry points ---------------------------------------------------------


def smoke(setup: Setup, state: Dict[str, Any]) -> Dict[str, Any]:
    """One epoch of each recipe step through `train_run`: three steps, a validation, checkpoints."""
    from avsc_pipeline.models.checkpoint import load_checkpoint
    from avsc_pipeline.training.run import train_run

    # As on the bare GPU machine this check is for: no figures (the trainer then skips
    # curves.png; on a 2-core CPU drawing them takes longer than the tiny models' training).
    sys.modules.setdefault("matplotlib", None)
    out: Dict[str, Any] = {"rows": []}
    for step in ("audio", "video", "joint"):
        run = setup.work / "smoke" / step
        result = train_run(setup.smoke, run, parts.step_sections(setup, step, "train.epochs=1"),
                           device=str(setup.device), progress=False)
        steps = load_checkpoint(run / "last.pt").resume.step
        megabytes = (run / "last.pt").stat().st_size / 1e6
        out[step] = {"steps": steps, "samples_per_s": result["samples_per_s"], "val_log_loss": result["val_log_loss"],
                     "last_pt_mb": megabytes, "best_pt": (run / "best.pt").is_file()}
        out["rows"].append(row(f"smoke {step}: {steps} steps, validation, checkpoint; samples/s",
                               result["samples_per_s"], note=f"val log loss {fmt(result['val_log_loss'])}, "
                                                             f"last.pt {megabytes:.1f} MB"))
        if step == "joint":
            state["joint_run"], state["joint_row"] = run, result
    return out


def child_env(setup: Setup) -> Dict[str, str]:
    """This process's environment, with its torch threads for a child's OpenMP."""
    return {**os.environ, **({"OMP_NUM_THREADS": str(setup.threads)} if setup.threads else {})}


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float) -> None:
    """Poll `condition` (an event in a file); raise if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"avsc-train ended (code {process.returncode}) before the event")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the event did not come within {timeout:.0f} s")
        time.sleep(0.02)


def resume(setup: Setup) -> Dict[str, Any]:
    """SIGTERM in the middle of epoch 1 of 2 of `avsc-train` (the joint step), then `--resume`."""
    from avsc_pipeline.models.checkpoint import load_checkpoint

    run, log = setup.work / "resume", setup.work / "resume-stderr.txt"
    command = [sys.executable, "-m", "avsc_pipeline_cli.train", str(setup.smoke), str(run), "--no-progress",
               "--device", str(setup.device), "--config", str(STEP_CONFIGS / "joint.yaml")]
    for text in parts.step_overrides(setup, "train.epochs=2"):
        command += ["--set", text]
    timeout = max(30.0, setup.left())
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env=child_env(setup))
        try:
            # The event: the loop has its signal handlers in place (logged by Trainer.fit).
            wait_for(lambda: (run / "train.log").is_file() and "epoch 1/2 started" in (run / "train.log").read_text(),
                     process, timeout)
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            raise RuntimeError(f"{err}; stderr: {log.read_text()[-800:].strip()}") from None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if not (run / "last.pt").is_file():
        raise RuntimeError(f"no last.pt after SIGTERM (exit {code}); stderr: {log.read_text()[-800:].strip()}")
    state = load_checkpoint(run / "last.pt").resume
    resumed = subprocess.run(command + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                             env=child_env(setup))
    lines = (run / "metrics.csv").read_text().splitlines() if (run / "metrics.csv").is_file() else []
    epochs = [line.split(",")[0] for line in lines[1:]]
    mid_epoch = state.epoch == 0 and state.epoch_batches > 0
    passed = code == 128 + signal.SIGTERM and mid_epoch and resumed.returncode == 0 and epochs == ["1", "2"]
    out = {"stop_exit_code": code, "stopped_at": {"epoch": state.epoch, "batches": state.epoch_batches},
           "resume_exit_code": resumed.returncode, "epochs_in_metrics": epochs, "passed": passed}
    if not passed:
        out["stderr_tail"] = (log.read_text()[-1500:] + resumed.stderr[-1500:]).strip()
    out["rows"] = [row("SIGTERM mid-epoch, then --resume", "PASS" if passed else "FAIL",
                       note=f"exit {code} after batch {state.epoch_batches} of epoch {state.epoch + 1}; resume exit "
                            f"{resumed.returncode}, metrics epochs {epochs}")]
    return out


# -- two processes on one device ----------------------------------------------------------------------


def audio_step_worker(args: argparse.Namespace) -> int:
    """The process of `two_processes`: the audio step (bf16 + CL) warms up, says `ready`, waits
    for a line on stdin, runs `--steps` timed steps and prints their figures as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        setup = make_setup(args, Path(tmp), features=args.features)
        sections = parts.with_mode(parts.step_sections(setup, "audio"), "bf16+CL")
        inputs = parts.open_input(setup, sections)
        batches = parts.endless(inputs)
        try:
            trainer = parts.make_trainer(setup, sections, inputs)
            for _ in range(setup.warmup + 2):
                trainer._step(next(batches), boundary=True)
            parts.synchronize(setup.device)
            print("ready", flush=True)
            sys.stdin.readline()
            print(json.dumps(parts.timed_pipeline(trainer, batches, args.steps)), flush=True)
        finally:
            batches.close()
            inputs.close()
    return 0


def read_line(process: subprocess.Popen) -> str:
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"an audio-step process ended early (code {process.wait()})")
    return line.strip()


def timed_together(processes: Sequence[subprocess.Popen]) -> List[float]:
    """Start the timed steps of warmed-up workers at once (the event they wait for); their samples/s."""
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    rates = [json.loads(read_line(process))["samples_per_s"] for process in processes]
    for process in processes:
        process.wait()
    return rates


def two_processes(setup: Setup) -> Dict[str, Any]:
    """Two audio-step processes (bf16 + CL, the target batch) sharing the device against one.

    Three workers start and warm up together; the first runs alone, then the other two at once.
    """
    steps = 10 if setup.quick else 200
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "audio-step", "--features",
               str(setup.features), "--device", str(setup.device), "--steps", str(steps)]
    command += (["--quick"] if setup.quick else []) + ["--threads", str(setup.threads)]
    logs = [open(setup.work / f"worker-{i}.txt", "w+") for i in range(3)]
    processes = [subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                  text=True) for log in logs]
    watchdog = threading.Timer(max(30.0, setup.left()), lambda: [p.kill() for p in processes])
    watchdog.start()
    try:
        for process in processes:
            if read_line(process) != "ready":
                raise RuntimeError("expected 'ready' from an audio-step process")
        alone = timed_together(processes[:1])[0]
        pair = timed_together(processes[1:])
    except (RuntimeError, ValueError) as err:
        for log in logs:
            log.seek(0)
        tail = " | ".join(log.read().strip()[-400:] for log in logs)
        raise RuntimeError(f"{err}; stderr: {tail}") from None
    finally:
        watchdog.cancel()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    return {"one_samples_per_s": alone, "two_samples_per_s": pair, "ratio": sum(pair) / alone,
            "rows": [row("two audio-step processes, total samples/s", sum(pair), alone, sum(pair) / alone,
                         f"each {', '.join(f'{r:.1f}' for r in pair)}; baseline: one process")]}


# -- scoring: validation against avsc-eval, avsc-eval against a bare forward ----------------------------


def score_like_avsc_eval(ckpt: Path, folder: Path, device: torch.device, rows: Optional[np.ndarray] = None,
                         calibrated: bool = True) -> Dict[str, Any]:
    """What `evaluate_checkpoint` (avsc-eval) does to score: its scorer, the checkpoint's loader
    section, its split reader and `score_rows`; `seconds` is its own timed region. (Its files
    are left out: the confusion figure needs matplotlib, which a bare GPU machine lacks.)"""
    from avsc_pipeline.evaluation.evaluate import loader_config_of, open_split, score_rows
    from avsc_pipeline.evaluation.loading import load_scorer

    scorer, artifact = load_scorer(ckpt, device, calibrated=calibrated)
    config = loader_config_of(artifact, None, None, str(ckpt))
    with open_split(folder, scorer, ckpt) as dataset:
        started = time.perf_counter()
        probs = score_rows(dataset, scorer, config, rows=rows)
        seconds = time.perf_counter() - started
        labels = dataset.labels if rows is None else dataset.labels[rows]
    return {"scorer": scorer, "probs": probs, "labels": labels, "seconds": seconds, "config": config}


def first_batch_s(ckpt: Path, folder: Path, scorer: Any, config: LoaderConfig) -> float:
    """Seconds from making avsc-eval's loader to its first batch (workers starting, first reads)."""
    from avsc_pipeline.dataio.loader import make_loader
    from avsc_pipeline.dataio.samplers import EpochSampler
    from avsc_pipeline.evaluation.evaluate import open_split

    with open_split(folder, scorer, ckpt) as dataset:
        sampler = EpochSampler(np.arange(len(dataset)), shuffle=False, num_replicas=1, rank=0)
        started = time.perf_counter()
        loader = make_loader(dataset, sampler, config, scorer.device, drop_last=False)
        batches = iter(loader)
        next(batches)
        seconds = time.perf_counter() - started
        del batches
        loader.release_unreferenced()
    return seconds


def measure_eval(setup: Setup) -> Dict[str, Any]:
    """avsc-eval's scoring of the speed folder's `train` split (a joint checkpoint, the target
    batch, the recipe's workers) against the bare forward of the same scorer's model."""
    from avsc_pipeline.models.video import is_channels_last
    from avsc_pipeline.testing import write_test_checkpoint

    model_config = parts.step_sections(setup, "joint")["model"]
    folder = setup.features / "train"
    loader = LoaderConfig(batch_size=setup.batch, num_workers=setup.workers)
    ckpt = write_test_checkpoint(setup.work / "eval-run" / "best.pt", folder, model_config, loader=loader)
    best = 0.0
    for _ in range(2):  # the first pass autotunes the eval shapes
        result = score_like_avsc_eval(ckpt, folder, setup.device)
        best = max(best, len(result["probs"]) / result["seconds"])
    scorer, segments = result["scorer"], len(result["probs"])
    startup = first_batch_s(ckpt, folder, scorer, result["config"])
    shape = scorer.feature_config
    generator = torch.Generator().manual_seed(0)
    raw = {"audio": torch.randn((setup.batch,) + shape.audio_shape, generator=generator),
           "video": torch.randint(0, 256, (setup.batch,) + shape.video_shape, generator=generator,
                                  dtype=torch.uint8),
           "label": torch.zeros(setup.batch, dtype=torch.int64)}
    with scorer.eval_mode():
        batch = scorer.preparer(raw)
        bare = parts.bare_forward_rate(scorer.model, batch, segments, setup.batch, setup.device, scorer.precision)
    channels_last = bool(scorer.model.video is not None and is_channels_last(scorer.model.video.backbone))
    precision = str(scorer.precision or "float32").replace("torch.", "")
    # avsc-eval's loop includes starting its workers: amortized over a real split's tens of
    # thousands of segments, not over these few rows.
    steady = segments / max(segments / best - startup, 1e-9)
    return {"segments_per_s": best, "bare_segments_per_s": bare, "ratio": best / bare, "n_segments": segments,
            "first_batch_s": startup, "segments_per_s_after_first_batch": steady, "precision": precision,
            "model_channels_last": channels_last,
            "rows": [row("avsc-eval, segments/s", best, bare, best / bare,
                         f"{segments} segments, {precision}, scorer's model channels-last: {channels_last}; "
                         f"first batch after {startup:.2f} s, {steady:.0f} seg/s without it")]}


def measure_validation_vs_eval(setup: Setup, run: Path, validation: Dict[str, Any]) -> Dict[str, Any]:
    """The last epoch's validation figures of a run against avsc-eval's scoring of its
    `last.pt` (uncalibrated, as `metrics.csv`) on the same rows."""
    from avsc_pipeline.config import from_dict
    from avsc_pipeline.evaluation.metrics import score
    from avsc_pipeline.models.checkpoint import load_checkpoint

    artifact = load_checkpoint(run / "last.pt").artifact
    loader = from_dict(LoaderConfig, artifact.config["loader"])
    inputs = build_training_input(setup.smoke, loader, None, setup.device)
    rows = inputs.split.validation
    inputs.close()
    result = score_like_avsc_eval(run / "last.pt", setup.smoke / "train", setup.device, rows=rows, calibrated=False)
    expected = score(result["labels"], result["probs"], artifact.classes)
    loss, accuracy = validation["val_log_loss"], validation["val_accuracy"]
    difference = abs(loss - expected["log_loss"])
    # Zero is expected (one scoring path, one precision policy); the tolerance is float rounding
    # of the same sums, far below the ~1e-3 that a second precision or memory format gives.
    passed = difference <= 1e-7 * max(1.0, abs(loss)) and accuracy == expected["accuracy"]
    return {"validation_log_loss": loss, "avsc_eval_log_loss": expected["log_loss"], "difference": difference,
            "validation_accuracy": accuracy, "avsc_eval_accuracy": expected["accuracy"], "rows_scored": len(rows),
            "passed": passed,
            "rows": [row("log loss, validation vs avsc-eval (same rows)", loss, expected["log_loss"], None,
                         f"difference {difference:.3g} ({'PASS' if passed else 'FAIL'}, should be 0)")]}


# -- the run ------------------------------------------------------------------------------------------


def run_section(setup: Setup, report: Dict[str, Any], name: str, needs_s: float,
                measure: Callable[[], Dict[str, Any]], requires: Optional[str] = None) -> None:
    """Run one measurement into `report["sections"][name]`: skipped (with the reason) when the
    budget left is under `needs_s` or when a section it needs did not run; a failure is
    recorded with its one-line error and the run goes on."""
    sections = report["sections"]
    left = setup.left()
    needed = sections.get(requires, {}).get("status") if requires is not None else "measured"
    if needed != "measured":  # a failure upstream fails this one; a skip skips it
        status = "failed" if needed == "failed" else "skipped"
        sections[name] = {"status": status, "reason": f"needs the {requires} section, which {needed}"}
    elif left < needs_s:
        sections[name] = {"status": "skipped",
                          "reason": f"budget: {max(left, 0):.0f} s left, needs about {needs_s:.0f} s"}
    else:
        started = time.monotonic()
        try:
            sections[name] = {"status": "measured", **measure()}
        except Exception as err:  # noqa: BLE001 - recorded; the other measurements still run
            traceback.print_exc(file=sys.stderr)
            sections[name] = {"status": "failed", "error": one_line(err)}
        sections[name]["seconds"] = round(time.monotonic() - started, 1)
    print(f"[{time.monotonic() - report['_started']:6.0f} s] {name}: {sections[name]['status']}", file=sys.stderr,
          flush=True)


def measurements(setup: Setup, state: Dict[str, Any]) -> List[tuple]:
    """(name, seconds needed on a GPU, seconds needed with --quick, measure, required section)."""
    b = setup.batch
    compile_modes = parts.COMPILE_MODES
    return [
        ("environment", 0, 0, lambda: environment(setup), None),
        ("data", 20, 5, lambda: write_data(setup), None),
        ("smoke", 60, 20, lambda: smoke(setup, state), "data"),
        ("validation_vs_eval", 10, 3, lambda: measure_validation_vs_eval(
            setup, state["joint_run"], state["joint_row"]), "smoke"),
        ("resume", 60, 20, lambda: resume(setup), "data"),
        ("host_syncs", 30, 8, lambda: parts.measure_host_syncs(setup), "data"),
        ("throughput_b32", 40, 8, lambda: parts.measure_throughput(setup, [b], ["bf16+CL", "fp32", "bf16"]), "data"),
        ("avsc_eval", 15, 5, lambda: measure_eval(setup), "data"),
        ("cache", 15, 5, lambda: parts.measure_cache(setup), "data"),
        ("loader", 20, 8, lambda: parts.measure_loader(setup), "data"),
        ("two_processes", 40, 20, lambda: two_processes(setup), "data"),
        ("throughput_batches", 30, 5, lambda: parts.measure_throughput(
            setup, [x for x in setup.batches if x != b], ["bf16+CL", "fp32", "bf16"]), "data"),
        ("throughput_compile", 60, 0, lambda: parts.measure_throughput(setup, setup.batches, compile_modes), "data"),
    ]


def targets(setup: Setup, sections: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The issue's targets (one H200, bf16 + CL, batch 32), each with its figure and whether it
    is met; None where it was not measured, and on the CPU, where the figure is shown, not judged."""
    b = setup.batch
    configs = sections.get("throughput_b32", {}).get("configs", {})
    found = []
    for step in ("joint", "audio"):
        figures = configs.get(f"{step} b{b} bf16+CL", {})
        reason = figures.get("reason") or figures.get("error")
        found.append((f"efficiency, {step} b{b} bf16+CL", figures.get("efficiency", reason), ">= 0.85",
                      lambda v: v >= 0.85))
        found.append((f"data wait, {step} b{b} bf16+CL", figures.get("data_wait_fraction", reason), "< 0.05",
                      lambda v: v < 0.05))
    found.append(("avsc-eval / bare forward", sections.get("avsc_eval", {}).get("ratio"), ">= 0.8",
                  lambda v: v >= 0.8))
    for key, value in sections.get("host_syncs", {}).get("models", {}).items():
        if "before" not in key:
            found.append((f"host syncs per step, {key}", value.get("per_step"), "== 0", lambda v: v == 0))
    out = []
    for name, value, wanted, check in found:
        measured = isinstance(value, (int, float))
        out.append({"target": name, "value": value if measured or isinstance(value, str) else "not measured",
                    "wanted": wanted, "met": bool(check(value)) if measured and setup.cuda else None})
    return out


def markdown(report: Dict[str, Any], rows: List[List[Any]]) -> str:
    lines = [f"# GPU check: {report['device_name']} ({report['device']}){' --quick' if report['quick'] else ''}",
             "", f"{report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget.", "",
             "| measurement | value | baseline | ratio | note |", "|---|---|---|---|---|"]
    lines += [f"| {what} | {fmt(value, '.4g')} | {fmt(base, '.4g')} | {fmt(ratio, '.3f')} | {note} |"
              for what, value, base, ratio, note in rows]
    lines += ["", "| target | value | wanted | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {fmt(t['value'], '.4g')} | {t['wanted']} | "
              f"{'n/a' if t['met'] is None else 'yes' if t['met'] else 'NO'} |" for t in report["targets"]]
    lines += ["", "Correctness: " + ", ".join(f"{k} {v}" for k, v in report["correctness"].items())]
    for name, section in report["sections"].items():
        if section["status"] != "measured":
            lines.append(f"- {name}: {section['status']}: {section.get('reason') or section.get('error')}")
    return "\n".join(lines) + "\n"


def finish(setup: Setup, report: Dict[str, Any], out: Path) -> int:
    """Targets, correctness, the files and the printed table; the exit code."""
    sections = report["sections"]
    leaked = sorted(name for name in MEDIA_MODULES if sys.modules.get(name) is not None)
    sections["environment"]["media_modules_imported"] = leaked
    report["targets"] = targets(setup, sections)
    correctness = {}
    for name in CORRECTNESS:
        section = sections[name]
        correctness[name] = ("PASS" if section.get("passed") else "FAIL") if section["status"] != "skipped" \
            else "skipped"
    correctness["no_media_imports"] = "FAIL" if leaked else "PASS"
    report["correctness"] = correctness
    report["elapsed_s"] = time.monotonic() - report.pop("_started")
    rows = []
    for section in sections.values():
        rows += section.pop("rows", [])
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    text = markdown(report, rows)
    (out / "gpu_check.md").write_text(text, encoding="utf-8")
    print(text)
    return 1 if "FAIL" in correctness.values() else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Random DenseNet-161 weights are the point here: their warning would repeat for every model.
    logging.getLogger("avsc_pipeline.models.registry").setLevel(logging.ERROR)
    if args.worker == "audio-step":
        return audio_step_worker(args)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        setup = make_setup(args, Path(tmp))
        if setup.cuda:
            torch.backends.cudnn.benchmark = True
        report: Dict[str, Any] = {"device": str(setup.device), "quick": setup.quick, "budget_s": args.budget_s,
                                  "_started": time.monotonic(), "sections": {}}
        report["device_name"] = torch.cuda.get_device_name(setup.device) if setup.cuda else "CPU"
        state: Dict[str, Any] = {}
        for name, gpu_s, quick_s, measure, requires in measurements(setup, state):
            run_section(setup, report, name, quick_s if setup.quick else gpu_s, measure, requires)
        setup.models.clear()
        return finish(setup, report, args.out)


if __name__ == "__main__":
    sys.exit(main())
