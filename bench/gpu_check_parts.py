"""The in-process measurements of `bench/gpu_check.py`: the trainer's step against a bare step,
host synchronizations, the loader, the embedding cache and `avsc-eval` against a bare forward.

Each `measure_*` function takes the check's :class:`Setup` and returns a dict of figures with
`rows`, the lines it adds to the printed table (`[what, value, baseline, ratio, note]`). What a
device cannot do is recorded as `"n/a (CPU)"`, never left out.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from avsc_pipeline.config import to_dict
from avsc_pipeline.dataio.training_input import TrainingInput, build_training_input
from avsc_pipeline.devices import autocast
from avsc_pipeline.models.classifier import SceneClassifier
from avsc_pipeline.sections import load_recipe
from avsc_pipeline.training.distributed import Context
from avsc_pipeline.training.initialize import build_run_model
from avsc_pipeline.training.losses import soft_target_cross_entropy
from avsc_pipeline.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
STEP_CONFIGS = ROOT / "configs" / "steps"
NA_CPU = "n/a (CPU)"
# The demo-sized models of --quick (the test suite's TINY settings).
QUICK_MODEL = ("model.audio_widths=[8, 8, 8]", "model.video=small_cnn", "model.fusion_hidden=[16]")
# Precision and memory format of each throughput mode, as `train:` keys.
MODES: Dict[str, Dict[str, Any]] = {
    "fp32": {"amp": "off", "channels_last": False},
    "bf16": {"amp": "bf16", "channels_last": False},
    "bf16+CL": {"amp": "bf16", "channels_last": True},
    "bf16+CL+compile": {"amp": "bf16", "channels_last": True, "compile": True},
    "bf16+CL+CUDA graphs": {"amp": "bf16", "channels_last": True, "compile": True,
                            "compile_mode": "reduce-overhead"},
}
COMPILE_MODES = ("bf16+CL+compile", "bf16+CL+CUDA graphs")


@dataclass
class Setup:
    """What every measurement shares: device, sizes, data folders, the time left, built models.

    Attributes:
        device: where the check runs.
        quick: tiny shapes and few steps (the test suite's run).
        features: a features folder (`train` + `train-aug`) of the speed measurements.
        smoke: a features folder whose `train` holds three training batches and as many
            validation rows.
        batch: the target batch size (32; 8 with --quick).
        batches: the batch sizes of the throughput table.
        workers: the loader's workers in training (the recipe's 2).
        worker_counts: the loader section's worker counts.
        steps: timed steps per figure.
        warmup: steps before timing (cuDNN autotuning, allocator, compilation).
        repeat: timed repetitions, the best counting (pipeline and bare step alternate).
        deadline: `time.monotonic()` at which the budget ends.
        work: a scratch folder.
        threads: torch threads of this process and the ones it starts (0: torch's default).
        models: built models by modality, reused between measurements.
    """

    device: torch.device
    quick: bool
    features: Path
    smoke: Path
    batch: int
    batches: Sequence[int]
    workers: int
    worker_counts: Sequence[int]
    steps: int
    warmup: int
    repeat: int
    deadline: float
    work: Path
    threads: int = 0
    models: Dict[str, SceneClassifier] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        """Seconds of the budget left."""
        return self.deadline - time.monotonic()


def row(what: str, value: Any, baseline: Any = None, ratio: Any = None, note: str = "") -> List[Any]:
    """One line of the printed table."""
    return [what, value, baseline, ratio, note]


def step_overrides(setup: Setup, *extra: str) -> List[str]:
    """`--set` values of a recipe step for this check: random video weights, no `init_from`,
    the check's batch size and workers, the tiny models with --quick."""
    base = ["model.video_weights=null", "train.init_from=null", f"loader.batch_size={setup.batch}",
            f"loader.num_workers={setup.workers}"]
    return base + (list(QUICK_MODEL) if setup.quick else []) + list(extra)


def step_sections(setup: Setup, step: str, *extra: str) -> Dict[str, Any]:
    """The resolved sections of `configs/steps/<step>.yaml` (the recipe's defaults otherwise)
    with :func:`step_overrides`."""
    return load_sections([STEP_CONFIGS / f"{step}.yaml"], step_overrides(setup, *extra))


def with_mode(sections: Dict[str, Any], mode: str) -> Dict[str, Any]:
    """The sections with the `train:` keys of a throughput mode."""
    return {**sections, "train": dataclasses.replace(sections["train"], **MODES[mode])}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the trainer's parts ------------------------------------------------------------------------


def open_input(setup: Setup, sections: Dict[str, Any], features: Optional[Path] = None) -> TrainingInput:
    """The training input of `sections` on the check's device (as `train_run` builds it)."""
    model_config, train = sections["model"], sections["train"]
    return build_training_input(features or setup.features, sections["loader"], sections["batch_augment"],
                                setup.device, train.seed, with_video=model_config.uses_video)


def endless(inputs: TrainingInput) -> Iterator[Dict[str, Any]]:
    """Raw batches of the train sampler, epoch after epoch (one loader, persistent workers)."""
    loader = inputs.loader(inputs.train_sampler)
    epoch = 0
    try:
        while True:
            inputs.train_sampler.set_epoch(epoch)
            count = 0
            for raw in loader:
                count += 1
                yield raw
            if count == 0:
                raise ValueError(f"expected training batches, got none of {inputs.loader_config.batch_size} rows")
            epoch += 1
    finally:
        loader.release_unreferenced()


def shared_model(setup: Setup, sections: Dict[str, Any], inputs: TrainingInput) -> SceneClassifier:
    """The modality's model, built once (as `train_run` builds it) and kept on the device."""
    config, train = sections["model"], sections["train"]
    if config.modality not in setup.models:
        features = inputs.dataset.feature_config
        model = build_run_model(config, train, list(inputs.classes), to_dict(features), features.audio_shape[0])
        setup.models[config.modality] = model.to(setup.device)
    return setup.models[config.modality]


def run_model(setup: Setup, sections: Dict[str, Any], inputs: TrainingInput) -> SceneClassifier:
    """The modality's shared model in the memory format `train_run` gives it (channels-last on
    CUDA when `train.channels_last`), the preparer normalizing frames for it."""
    model = shared_model(setup, sections, inputs)
    channels_last = setup.cuda and sections["train"].channels_last
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    inputs.preparer.set_frame_norm(model.frame_mean, model.frame_std)
    return model


def make_trainer(setup: Setup, sections: Dict[str, Any], inputs: TrainingInput) -> Trainer:
    """A :class:`Trainer` (new optimizer, the mode's precision, format and compilation) over the
    modality's shared model, as `train_run` composes it."""
    model = run_model(setup, sections, inputs)
    trainer = Trainer(sections, inputs, model, {}, setup.work / "run", Context(setup.device), progress=False)
    model.train()  # as `train_one_epoch` sets them
    inputs.preparer.train()
    return trainer


def bare_step(trainer: Trainer, raw: Dict[str, Any]) -> Callable[[], None]:
    """The same model's forward, backward and optimizer step on one prepared batch already on
    the device: the baseline of the trainer's step (no loader, no preparation, no accounting)."""
    batch = trainer.inputs.preparer(raw)
    audio, video, target = batch["audio"], batch.get("video"), batch["target"]
    if trainer.device.type == "cuda" and trainer.train_cfg.channels_last:
        audio = audio.contiguous(memory_format=torch.channels_last)
    model, optimizer = trainer.step_model, trainer.optimizer

    def step() -> None:
        with autocast(trainer.device, trainer.precision):
            logits = model(audio, video)
        soft_target_cross_entropy(logits.float(), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed_bare(trainer: Trainer, step: Callable[[], None], steps: int) -> float:
    """Samples/s of `steps` bare steps (one untimed step first)."""
    size = trainer.loader_cfg.batch_size
    step()
    synchronize(trainer.device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(trainer.device)
    return steps * size / (time.perf_counter() - started)


def timed_pipeline(trainer: Trainer, batches: Iterator[Dict[str, Any]], steps: int) -> Dict[str, float]:
    """Samples/s and data-wait share of `steps` trainer steps (`Trainer._step` on the loader's
    raw batches, the loop of `train_one_epoch`), with the peak GPU memory in GB."""
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    synchronize(trainer.device)
    samples, waited = 0, 0.0
    started = time.perf_counter()
    for _ in range(steps):
        fetch = time.perf_counter()
        raw = next(batches)
        waited += time.perf_counter() - fetch
        samples += trainer._step(raw, boundary=True)[2]
    synchronize(trainer.device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(trainer.device) / 1e9 if trainer.device.type == "cuda" else NA_CPU
    return {"samples_per_s": samples / elapsed, "data_wait_fraction": waited / elapsed, "peak_gb": peak}


def gpu_busy_fraction(trainer: Trainer, batches: Iterator[Dict[str, Any]], steps: int) -> Any:
    """Share of the wall time in which the GPU runs kernels or copies, from `torch.profiler`
    over `steps` trainer steps (the union of the device's activity intervals)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        synchronize(trainer.device)
        started = time.perf_counter()
        for _ in range(steps):
            trainer._step(next(batches), boundary=True)
        synchronize(trainer.device)
        wall = time.perf_counter() - started
    if trainer.device.type != "cuda":
        return NA_CPU
    spans = sorted((e.start_ns(), e.start_ns() + e.duration_ns()) for e in prof.profiler.kineto_results.events()
                   if e.device_type() == DeviceType.CUDA)
    busy, end = 0, None
    for start, stop in spans:
        if end is None or start > end:
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    return min(1.0, busy / 1e9 / wall)


# -- throughput ---------------------------------------------------------------------------------


def mode_reason(setup: Setup, mode: str) -> Optional[str]:
    """Why a mode is not measured here, or None."""
    if not setup.cuda and MODES[mode].get("compile_mode") == "reduce-overhead":
        return NA_CPU + ": CUDA graphs"
    if not setup.cuda and mode in ("bf16", "bf16+CL"):
        return NA_CPU + ": bf16 autocast and channels-last are CUDA-only in the trainer"
    if not setup.cuda and setup.quick and mode in COMPILE_MODES:
        return "skipped with --quick on the CPU: inductor takes minutes to compile even the tiny model"
    return None


def config_cost(setup: Setup, step: str, batch: int, mode: str) -> float:
    """A rough estimate of one throughput figure's seconds (for the budget)."""
    if setup.quick:
        return 3.0
    compile_s = {"joint": 150.0, "audio": 50.0}[step] if mode in COMPILE_MODES else 0.0
    return compile_s + (12.0 if step == "joint" else 4.0) * batch / 32 * (2.0 if mode == "fp32" else 1.0)


def measure_config(setup: Setup, sections: Dict[str, Any], inputs: TrainingInput,
                   batches: Iterator[Dict[str, Any]], mode: str) -> Dict[str, Any]:
    """One model at one batch size in one mode: the trainer's step against the bare step."""
    trainer = make_trainer(setup, with_mode(sections, mode), inputs)
    warmup = setup.warmup + (3 if MODES[mode].get("compile") else 0)  # CUDA graphs record after warm-up
    for _ in range(warmup):
        trainer._step(next(batches), boundary=True)
    bare = bare_step(trainer, next(batches))
    best_pipe: Dict[str, Any] = {"samples_per_s": 0.0}
    best_bare = 0.0
    for _ in range(setup.repeat):  # alternately, the best of each counting
        best_bare = max(best_bare, timed_bare(trainer, bare, setup.steps))
        pipe = timed_pipeline(trainer, batches, setup.steps)
        if pipe["samples_per_s"] > best_pipe["samples_per_s"]:
            best_pipe = pipe
    out = {**best_pipe, "bare_samples_per_s": best_bare, "efficiency": best_pipe["samples_per_s"] / best_bare,
           "precision": str(trainer.precision or torch.float32).replace("torch.", "")}
    if inputs.loader_config.batch_size == setup.batch and not MODES[mode].get("compile"):
        out["gpu_busy_fraction"] = gpu_busy_fraction(trainer, batches, 20 if not setup.quick else 3)
    del trainer, bare
    return out


def measure_throughput(setup: Setup, batch_sizes: Sequence[int], modes: Sequence[str],
                       steps: Sequence[str] = ("joint", "audio")) -> Dict[str, Any]:
    """Samples/s of the trainer's step and of a bare step per model, batch size and mode (each
    figure within the budget, else skipped with the reason)."""
    figures: Dict[str, Any] = {}
    rows = []
    for batch in batch_sizes:
        for step in steps:
            sections = step_sections(setup, step, f"loader.batch_size={batch}")
            inputs = batches = None
            try:
                for mode in modes:
                    name = f"{step} b{batch} {mode}"
                    reason = mode_reason(setup, mode)
                    cost = config_cost(setup, step, batch, mode)
                    if reason is None and setup.left() < cost:
                        reason = f"skipped: {setup.left():.0f} s of the budget left, needs about {cost:.0f} s"
                    if reason is not None:
                        figures[name] = {"status": "skipped", "reason": reason}
                        rows.append(row(name, reason))
                        continue
                    if inputs is None:
                        inputs = open_input(setup, sections)
                        batches = endless(inputs)
                    try:
                        result = measure_config(setup, sections, inputs, batches, mode)
                    except Exception as err:  # noqa: BLE001 - one figure's failure is recorded, the rest run
                        figures[name] = {"status": "failed", "error": one_line(err)}
                        rows.append(row(name, "FAILED", note=one_line(err)))
                        continue
                    figures[name] = {"status": "measured", **result}
                    rows.append(row(f"{name} samples/s", result["samples_per_s"], result["bare_samples_per_s"],
                                    result["efficiency"], throughput_note(result)))
            finally:
                if batches is not None:
                    batches.close()
                if inputs is not None:
                    inputs.close()
    return {"configs": figures, "rows": rows}


def throughput_note(result: Dict[str, Any]) -> str:
    busy = result.get("gpu_busy_fraction")
    parts = [f"data wait {100 * result['data_wait_fraction']:.1f}%"]
    if busy is not None:
        parts.append(f"GPU busy {fmt(busy, '.2f')}")
    parts.append(f"peak {fmt(result['peak_gb'], '.2f')} GB")
    return ", ".join(parts)


# -- host synchronizations ------------------------------------------------------------------------


def count_syncs(setup: Setup, trainer: Trainer, batches: Iterator[Dict[str, Any]], steps: int) -> Dict[str, Any]:
    """Host synchronizations per trainer step (`torch.cuda.set_sync_debug_mode("warn")`), over
    `steps` steps after two of warm-up, with the sites (file:line) that synchronized."""
    for _ in range(2):
        trainer._step(next(batches), boundary=True)
    raws = [next(batches) for _ in range(steps)]  # fetched outside the counted steps
    synchronize(setup.device)
    if not setup.cuda:
        for raw in raws:  # the same steps, so that this path runs in the CPU test too
            trainer._step(raw, boundary=True)
        return {"per_step": NA_CPU, "sites": {}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for raw in raws:
                trainer._step(raw, boundary=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"per_step": len(syncs) / steps, "sites": dict(sites.most_common(10))}


def measure_host_syncs(setup: Setup) -> Dict[str, Any]:
    """Host synchronizations per training step of each model (bf16 + channels-last, the target
    batch), and of the models with video with `VideoRandAugment.masked = False` (before the fix:
    Sharpness and Contrast chosen by `nonzero`; the per-device constants stay cached)."""
    figures: Dict[str, Any] = {}
    rows = []
    steps = 3 if setup.quick else 5
    for step in ("audio", "video", "joint"):
        sections = with_mode(step_sections(setup, step), "bf16+CL")
        inputs = open_input(setup, sections)
        batches = endless(inputs)
        try:
            trainer = make_trainer(setup, sections, inputs)
            augment = inputs.preparer.video_aug if sections["model"].uses_video else None
            variants = [("masked (default)", None)]
            if augment is not None:
                variants.append(("masked=False (before)", False))
            for label, masked in variants:
                if augment is not None:
                    augment.masked = masked
                result = count_syncs(setup, trainer, batches, steps)
                figures[f"{step} {label}"] = result
                sites = ", ".join(f"{k} x{v}" for k, v in result["sites"].items())
                rows.append(row(f"{step} step, host syncs per step, {label}", result["per_step"], note=sites))
        finally:
            if inputs.preparer.video_aug is not None:
                inputs.preparer.video_aug.masked = None  # back to the default (True on CUDA)
            batches.close()
            inputs.close()
    return {"steps_counted": steps, "models": figures, "rows": rows}


# -- the loader -----------------------------------------------------------------------------------


def pinned_copy_ms(raw: Dict[str, Any], repeat: int) -> float:
    """Milliseconds to copy one batch's audio and frames into new pinned memory, as the
    loader's copying thread does (`ShardLoader._from_slot`)."""
    pageable = {k: raw[k].clone() for k in ("audio", "video") if k in raw}
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for value in pageable.values():
            torch.empty_like(value, pin_memory=True).copy_(value)
        best = min(best, time.perf_counter() - started)
    return 1000 * best


def measure_loader(setup: Setup) -> Dict[str, Any]:
    """Per worker count: the loader alone (ms per joint batch, steady state), the pinned copy
    of one batch, and the data wait of the joint model's training step (bf16 + channels-last)."""
    figures: Dict[str, Any] = {}
    rows = []
    count = 6 if setup.quick else 20
    for workers in setup.worker_counts:
        sections = with_mode(step_sections(setup, "joint", f"loader.num_workers={workers}"), "bf16+CL")
        inputs = open_input(setup, sections)
        batches = endless(inputs)
        try:
            for _ in range(2 * workers + 1):  # the prefetched batches come at once
                next(batches)
            started = time.perf_counter()
            for _ in range(count):
                raw = next(batches)
            batch_ms = 1000 * (time.perf_counter() - started) / count
            copy = pinned_copy_ms(raw, 5) if setup.cuda else NA_CPU
            del raw
            trainer = make_trainer(setup, sections, inputs)
            for _ in range(setup.warmup):
                trainer._step(next(batches), boundary=True)
            pipe = timed_pipeline(trainer, batches, setup.steps)
        finally:
            batches.close()
            inputs.close()
        figures[f"{workers} workers"] = {"batch_ms": batch_ms, "pinned_copy_ms": copy, **pipe}
        rows.append(row(f"loader alone, {workers} workers, ms per batch of {setup.batch}", batch_ms,
                        note=f"pinned copy {fmt(copy, '.2f')} ms per batch"))
        mode = "bf16+CL" if setup.cuda else "fp32"
        rows.append(row(f"joint step {mode}, {workers} workers, data wait %", 100 * pipe["data_wait_fraction"],
                        note=f"{pipe['samples_per_s']:.1f} samples/s"))
    return {"figures": figures, "rows": rows}


# -- the embedding cache and avsc-eval -------------------------------------------------------------


def bare_forward_rate(forward: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
                      batch: Dict[str, Any], rows: int, size: int, device: torch.device,
                      precision: Optional[torch.dtype]) -> float:
    """Segments/s of `forward(audio, video)` in batches of `size` over `rows` segments, on one
    prepared batch already on the device (no grad)."""
    batches = max(1, math.ceil(rows / size))
    with torch.no_grad(), autocast(device, precision):
        forward(batch["audio"], batch.get("video"))  # warm-up
        synchronize(device)
        started = time.perf_counter()
        for _ in range(batches):
            forward(batch["audio"], batch.get("video"))
        synchronize(device)
    return batches * size / (time.perf_counter() - started)


def measure_cache(setup: Setup) -> Dict[str, Any]:
    """`compute_embeddings` of the joint model's video extractor over every row (as `train_run`
    caches a frozen one: eval mode, the run's autocast, channels-last on CUDA) against the bare
    extractor forward on prepared frames."""
    from avsc_pipeline.devices import amp_dtype
    from avsc_pipeline.training.embedding_cache import compute_embeddings

    sections = with_mode(step_sections(setup, "joint"), "bf16+CL")
    inputs = open_input(setup, sections)
    try:
        model = run_model(setup, sections, inputs)
        precision = amp_dtype(sections["train"].amp, setup.device)
        split = inputs.split
        rows = np.concatenate([split.train, split.augmented, split.validation])
        distinct = len(np.unique(inputs.dataset.frame_sources(rows)))
        best = 0.0
        for _ in range(2):  # the first pass autotunes the eval shapes
            started = time.perf_counter()
            compute_embeddings(model, "video", inputs, rows, precision)
            synchronize(setup.device)
            best = max(best, distinct / (time.perf_counter() - started))
        raw = next(iter(inputs.loader(inputs.train_sampler)))
        batch = inputs.preparer.eval()(raw)
        was = model.training
        model.eval()
        try:
            bare = bare_forward_rate(lambda audio, video: model.embed_video(video), batch, distinct,
                                     setup.batch, setup.device, precision)
        finally:
            model.train(was)
            inputs.preparer.train()
    finally:
        inputs.close()
    return {"segments_per_s": best, "bare_segments_per_s": bare, "ratio": best / bare, "segments": distinct,
            "rows": [row("embedding cache (video), segments/s", best, bare, best / bare,
                         f"{distinct} distinct frame pairs, batch {setup.batch}")]}


# -- formatting -----------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".3g") -> str:
    """A figure for the table: numbers formatted, anything else as text, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]
