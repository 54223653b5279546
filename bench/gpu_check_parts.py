"""The sections of `bench/gpu_check.py`: each runs in its own process and appends every figure to
`OUT/results.jsonl` the moment it is measured (:class:`Results`).

Every measurement goes through the package's public entry points: a run is built by
`training.run.read_recipe`, `built_input` and `build_trainer` (as `avsc-train` builds it) and
stepped by `Trainer.train_step`; scoring is `evaluation.scoring.score_rows` at the batch
`evaluation.evaluate.loader_config_of` gives `avsc-eval`; the cache is
`training.embedding_cache.compute_embeddings`. The baselines (a bare forward-backward-step on a
batch already on the device, graphed on CUDA, and a bare forward) are the only code written
here, and each ratio divides by a baseline measured in the same process.

A figure is the median over `REPEATS` repeats of `steps` timed steps (200 of the audio step, 30
of the joint one on a GPU; a handful with `--quick`). What a device cannot measure is recorded
as `"n/a (CPU)"`, never left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
NA_CPU = "n/a (CPU)"
REPEATS = 3
#: torch's own message of a synchronizing CUDA call (`set_sync_debug_mode("warn")`); other
#: messages (its one-time "prototype feature" notice) are not syncs.
SYNC_MESSAGE = "called a synchronizing CUDA operation"
QUICK_MODEL = ("model.audio_widths=[8, 8, 8]", "model.video=small_cnn", "model.fusion_hidden=[16]")
MEDIA_MODULES = ("librosa", "soundfile", "av")


@dataclass
class Setup:
    """What every section shares.

    Attributes:
        device: where the check runs.
        quick: tiny shapes and few steps (the test suite's run).
        work: the check's scratch folder (shards in `work/features`).
        out: the output folder (results.jsonl).
    """

    device: torch.device
    quick: bool
    work: Path
    out: Path

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def features(self) -> Path:
        return self.work / "features"

    def steps(self, step: str) -> int:
        """Timed steps per repeat: 200 audio, 30 joint (a handful with --quick)."""
        if self.quick:
            return 6 if step == "audio" else 3
        return 200 if step == "audio" else 30

    def batches(self, step: str) -> Tuple[int, ...]:
        """The batch sizes of the step's throughput figures."""
        if self.quick:
            return (8, 16)
        return (32, 64, 128) if step == "audio" else (32, 64)

    @property
    def batch(self) -> int:
        """The paper's batch (8 with --quick)."""
        return 8 if self.quick else 32


class Results:
    """Appends one JSON line per figure to `results.jsonl`, each with one `write` call on a file
    opened for appending, so a process killed at any moment leaves whole lines only.

    Args:
        path: the results file.
        section: the section every line is recorded under.
    """

    def __init__(self, path: Path, section: str) -> None:
        self.path, self.section = Path(path), section

    def add(self, name: str, value: Any, unit: str = "", baseline: Any = None, note: str = "", **extra: Any) -> None:
        """Record a figure now (the ratio to `baseline` when both are numbers)."""
        ratio = value / baseline if _number(value) and _number(baseline) and baseline else None
        self.write({"section": self.section, "name": name, "value": value, "unit": unit, "baseline": baseline,
                    "ratio": ratio, "note": note, **extra})

    def write(self, record: Dict[str, Any]) -> None:
        line = (json.dumps(record, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_results(path: Path) -> List[Dict[str, Any]]:
    """Every whole JSON line of a results file (a torn last line, if any, is left out)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(run: Callable[[], int], device: torch.device, repeats: int = REPEATS) -> Tuple[float, List[float]]:
    """Median samples/s of `repeats` calls of `run` (which returns the samples it processed),
    and every repeat's rate."""
    rates = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        samples = run()
        synchronize(device)
        rates.append(samples / max(time.perf_counter() - started, 1e-9))
    return statistics.median(rates), rates


# -- runs built as avsc-train builds them -------------------------------------------------------------


def recipe_for(setup: Setup, step: str, batch: int, *extra: str):
    """`configs/paper.yaml` + `configs/steps/<step>.yaml` with random weights, no `init_from`,
    the given batch, the shards' own features, the tiny models with --quick."""
    from avsc_pipeline.recipe import configs_dir
    from avsc_pipeline.sections import load_recipe

    overrides = ["model.video_weights=null", "train.init_from=null", f"loader.batch_size={batch}",
                 f"loader.num_workers={1 if setup.quick else 2}", "train.epochs=1000"]
    if setup.quick:
        overrides += list(QUICK_MODEL)
    return load_recipe([configs_dir() / "paper.yaml", configs_dir() / "steps" / f"{step}.yaml"],
                       overrides + list(extra))


@contextlib.contextmanager
def open_trainer(setup: Setup, step: str, batch: int, *extra: str) -> Iterator[Any]:
    """A :class:`~avsc_pipeline.training.trainer.Trainer` of the step built by the functions
    `avsc-train` calls, in train mode; nothing is written (its run folder is scratch)."""
    from avsc_pipeline.training.distributed import Context
    from avsc_pipeline.training.run import build_trainer, built_input, read_recipe

    context = Context(setup.device)
    recipe, classes = read_recipe(context, setup.features, recipe_for(setup, step, batch, *extra),
                                                  None)
    with built_input(context, setup.features, recipe, classes) as (model, inputs):
        trainer = build_trainer(context, recipe, model, inputs, setup.work / f"run-{step}-{batch}", progress=False)
        trainer.model.train()
        inputs.preparer.train()
        yield trainer


def endless(trainer: Any) -> Iterator[Dict[str, Any]]:
    """The live loader's raw batches, epoch after epoch (one loader, its workers kept)."""
    sampler = trainer.inputs.train_sampler
    loader = trainer.inputs.loader(sampler)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        count = 0
        for raw in loader:
            count += 1
            yield raw
        if count == 0:
            raise ValueError(f"expected training batches, got none of {trainer.loader_cfg.batch_size} rows")
        epoch += 1


def prefetched(trainer: Any, batches: Iterator[Dict[str, Any]], count: int = 8) -> List[Dict[str, Any]]:
    """`count` raw batches copied out of the loader's slots (pinned on CUDA), to be cycled."""
    ring = []
    for _ in range(count):
        raw = next(batches)
        copy = {}
        for key, value in raw.items():
            if isinstance(value, torch.Tensor):
                value = value.clone()
                copy[key] = value.pin_memory() if trainer.device.type == "cuda" else value
            else:
                copy[key] = value
        ring.append(copy)
    return ring


def warm(trainer: Any, batches: Iterator[Dict[str, Any]], steps: int = 6) -> None:
    """Steps until a graphed step is captured (its warm-up and capture), or a few eager ones."""
    for _ in range(steps):
        trainer.train_step(next(batches))
    synchronize(trainer.device)


def trainer_rate(trainer: Any, batches: Iterator[Dict[str, Any]], steps: int) -> Tuple[float, float]:
    """Median samples/s of `steps` trainer steps over 3 repeats, and the data-wait share."""
    waited = [0.0]

    def run() -> int:
        samples = 0
        for _ in range(steps):
            fetch = time.perf_counter()
            raw = next(batches)
            waited[0] += time.perf_counter() - fetch
            samples += trainer.train_step(raw)[2]
        return samples

    started = time.perf_counter()
    rate, _ = median_rate(run, trainer.device)
    return rate, waited[0] / max(time.perf_counter() - started, 1e-9)


def cycle(ring: Sequence[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    while True:
        yield from ring


# -- the bare baselines ---------------------------------------------------------------------------------


def bare_step(trainer: Any, raw: Dict[str, Any], graphed: bool) -> Callable[[], int]:
    """The same model's forward, loss, backward and optimizer step on one batch prepared once
    and kept on the device: no loader, no preparation, no accounting (the efficiency baseline).
    On CUDA with `graphed`, captured in a CUDA graph (fused optimizer reading a device learning
    rate), as the trainer's own step is."""
    from avsc_pipeline.devices import autocast
    from avsc_pipeline.training.losses import soft_target_cross_entropy

    inference = trainer.inference
    batch = inference.prepare({k: v for k, v in raw.items()})
    audio = batch["audio"]
    if inference.channels_last:
        audio = audio.contiguous(memory_format=torch.channels_last)
    video, target = batch.get("video"), batch["target"]
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    lr = torch.tensor(1e-5, device=trainer.device) if graphed and trainer.device.type == "cuda" else 1e-5
    extra = {"fused": True} if trainer.device.type == "cuda" else {}
    if graphed and trainer.device.type == "cuda":
        extra["capturable"] = True
    optimizer = torch.optim.Adam(params, lr=lr, **extra)
    size = int(target.shape[0])

    def step() -> None:
        with autocast(trainer.device, inference.precision):
            logits = model(audio if model.uses_audio else None, video if model.uses_video else None)
        soft_target_cross_entropy(logits.float(), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if not (graphed and trainer.device.type == "cuda"):
        def eager(steps: int = 1) -> int:
            for _ in range(steps):
                step()
            return steps * size
        return eager
    side = torch.cuda.Stream(trainer.device)
    side.wait_stream(torch.cuda.current_stream(trainer.device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(trainer.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph, stream=side):
        step()

    def replay(steps: int = 1) -> int:
        for _ in range(steps):
            graph.replay()
        return steps * size
    return replay


def bare_forward_rate(forward: Callable[[], Any], size: int, batches: int, device: torch.device) -> float:
    """Median segments/s of `batches` no-grad calls of `forward` on a batch of `size` on the device."""
    def run() -> int:
        for _ in range(batches):
            forward()
        return batches * size

    with torch.no_grad():
        forward()
        return median_rate(run, device)[0]


# -- sections -------------------------------------------------------------------------------------------


def environment(setup: Setup, results: Results) -> None:
    """Versions, the device, the runtime modules this machine lacks."""
    import importlib.util

    missing = [name for name in ("numpy", "h5py", "torchvision", "click", "tqdm", "yaml", "scipy", "matplotlib")
               if importlib.util.find_spec(name) is None]
    name = torch.cuda.get_device_name(setup.device) if setup.cuda else "CPU"
    results.add("device", name, note=f"python {sys.version.split()[0]}, torch {torch.__version__}, "
                                     f"CUDA {torch.version.cuda}, missing modules: {', '.join(missing) or 'none'}")
    results.add("bf16 supported", bool(setup.cuda and torch.cuda.is_bf16_supported()))


def data(setup: Setup, results: Results) -> None:
    """The shards every later section reads: `train` and `train-aug` (the paper's shapes)."""
    from avsc_pipeline.sections.features import FeatureConfig
    from avsc_pipeline.testing import write_augmented_folder, write_random_folder

    config = FeatureConfig(n_mels=32, image_size=32) if setup.quick else FeatureConfig()
    rows = 40 if setup.quick else 96  # 384 rows: batches of 128 with a validation share; within 5 s
    started = time.perf_counter()
    write_random_folder(setup.features / "train", [rows] * 4, config)
    write_augmented_folder(setup.features / "train-aug", setup.features / "train", config, rows=rows)
    megabytes = sum(p.stat().st_size for p in setup.features.rglob("*.h5")) / 1e6
    results.add("shards written", megabytes, "MB", note=f"{4 * rows} + {rows} augmented rows, audio "
                f"{list(config.audio_shape)}, frames {list(config.video_shape)}, {time.perf_counter() - started:.1f} s")


def host_syncs(setup: Setup, results: Results) -> None:
    """Host synchronizations per trainer step (the default: graphed on CUDA), counting only
    torch's "called a synchronizing CUDA operation" warnings, for the audio and joint steps."""
    for step in ("audio", "joint"):
        for graph in (True,):
            label = f"{step} b{setup.batch} {'graph' if graph else 'eager'}"
            with open_trainer(setup, step, setup.batch, f"train.cuda_graph={str(graph).lower()}") as trainer:
                batches = endless(trainer)
                warm(trainer, batches)
                ring = prefetched(trainer, batches, 5)
                if not setup.cuda:
                    for raw in ring:  # the same steps, so that this path runs in the CPU test too
                        trainer.train_step(raw)
                    results.add(f"host syncs per step, {label}", NA_CPU)
                    continue
                synchronize(setup.device)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        for raw in ring:
                            trainer.train_step(raw)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                syncs = [w for w in caught if SYNC_MESSAGE in str(w.message)]
                sites = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
                results.add(f"host syncs per step, {label}", len(syncs) / len(ring), note=", ".join(sites[:6]))


def graphed_bare(setup: Setup, results: Results) -> None:
    """The graphed bare step (the efficiency baseline) at every batch size: audio b32/64/128,
    joint b32/64."""
    for step in ("audio", "joint"):
        for batch in setup.batches(step):
            with open_trainer(setup, step, batch) as trainer:
                raw = next(endless(trainer))
                run = bare_step(trainer, raw, graphed=True)
                steps = setup.steps(step)
                rate, rates = median_rate(lambda: run(steps), setup.device)
                how = "graphed" if setup.cuda else "eager (CPU)"
                results.add(f"bare step {step} b{batch}", rate, "samples/s",
                            note=f"{how}, median of {rates and len(rates)} x {steps} steps")


def gap(setup: Setup, results: Results) -> None:
    """Where the audio step's time goes at the paper's batch: the bare step, + the preparer, the
    trainer's step on prefetched batches, with the live loader, with 2 torch threads."""
    batch, steps = setup.batch, setup.steps("audio")
    with open_trainer(setup, "audio", batch) as trainer:
        batches = endless(trainer)
        raw = next(batches)
        bare = bare_step(trainer, raw, graphed=True)
        base, _ = median_rate(lambda: bare(steps), setup.device)
        results.add(f"gap audio b{batch}: bare step", base, "samples/s", note="graphed" if setup.cuda else "eager")
        eager = bare_step(trainer, raw, graphed=False)
        ring = prefetched(trainer, batches)
        device_ring = [{k: (v.to(setup.device) if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
                       for r in ring]

        def with_preparer() -> int:
            for i in range(steps):
                trainer.inference.prepare(device_ring[i % len(device_ring)])
                eager(1)
            return steps * batch

        rate, _ = median_rate(with_preparer, setup.device)
        results.add(f"gap audio b{batch}: eager bare step + preparer", rate, "samples/s", baseline=base)
        warm(trainer, batches)
        rate, _ = trainer_rate(trainer, cycle(ring), steps)
        results.add(f"gap audio b{batch}: trainer step, prefetched batches", rate, "samples/s", baseline=base,
                    note=f"step: {'graph' if trainer.graphed is not None else 'eager'}")
        rate, wait = trainer_rate(trainer, batches, steps)
        results.add(f"gap audio b{batch}: trainer step, live loader", rate, "samples/s", baseline=base,
                    note=f"data wait {100 * wait:.1f}%", data_wait_fraction=wait)
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            rate, wait = trainer_rate(trainer, batches, steps)
        finally:
            torch.set_num_threads(threads)
        results.add(f"gap audio b{batch}: trainer step, live loader, 2 torch threads", rate, "samples/s",
                    baseline=base, note=f"data wait {100 * wait:.1f}%")


def graph_vs_eager(setup: Setup, results: Results) -> None:
    """The whole-step CUDA graph against the eager step: 50-step loss trajectories from the same
    seeds on the same batches (dropout off), and each one's samples/s."""
    for step in ("audio", "joint"):
        trajectories, rates = [], []
        for graph in (True, False):
            with open_trainer(setup, step, setup.batch, "model.fusion_dropout=0",
                              f"train.cuda_graph={str(graph).lower()}") as trainer:
                batches = endless(trainer)
                ring = prefetched(trainer, batches, 10)
                torch.manual_seed(0)
                # copies: a graph's loss is its static output, overwritten by the next replay
                losses = [trainer.train_step(ring[i % len(ring)])[0].detach().float().clone() for i in range(50)]
                trajectories.append(torch.stack(losses).cpu())
                rate, _ = trainer_rate(trainer, cycle(ring), setup.steps(step))
                rates.append((rate, trainer.graphed is not None))
        gap_ = (trajectories[0] - trajectories[1]).abs().max().item()
        scale = trajectories[1].abs().max().item()
        graphed = rates[0][1]
        results.add(f"{step}: 50-step loss trajectory, graph vs eager, largest difference", gap_,
                    note=f"relative {gap_ / max(scale, 1e-9):.2e} ({'within' if gap_ <= 2e-2 * scale else 'OUTSIDE'} "
                         f"bf16 tolerance 2e-2)" if graphed else NA_CPU + ": both eager")
        results.add(f"{step} b{setup.batch}: trainer step, graph", rates[0][0] if graphed else NA_CPU, "samples/s")
        results.add(f"{step} b{setup.batch}: trainer step, eager", rates[1][0], "samples/s",
                    baseline=rates[0][0] if graphed else None)


def optimizers(setup: Setup, results: Results) -> None:
    """`optimizer.step()` of the joint model's trainable parameters: Adam foreach, fused, and
    fused + capturable replayed from a CUDA graph."""
    with open_trainer(setup, "joint", setup.batch) as trainer:
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        steps = setup.steps("joint") * 3
        variants = [("foreach", {"foreach": True})]
        variants += [("fused", {"fused": True}), ("fused+capturable, graphed", {"fused": True, "capturable": True})] \
            if setup.cuda else []
        base = None
        for name, kwargs in variants:
            lr = torch.tensor(1e-5, device=setup.device) if "capturable" in kwargs else 1e-5
            optimizer = torch.optim.Adam(params, lr=lr, **kwargs)
            optimizer.step()
            run: Callable[[], None] = optimizer.step
            if "capturable" in kwargs:
                graph = torch.cuda.CUDAGraph()
                side = torch.cuda.Stream(setup.device)
                side.wait_stream(torch.cuda.current_stream(setup.device))
                with torch.cuda.graph(graph, stream=side):
                    optimizer.step()
                run = graph.replay
            def timed(run: Callable[[], None] = run) -> int:
                for _ in range(steps):
                    run()
                return steps

            rate, _ = median_rate(timed, setup.device)
            base = base or rate
            results.add(f"Adam {name}, steps/s", rate, "steps/s", baseline=None if base is rate else base,
                        note=f"{sum(p.numel() for p in params) / 1e6:.1f} M parameters")
        if not setup.cuda:
            results.add("Adam fused and capturable", NA_CPU)


def batch_scaling(setup: Setup, results: Results) -> None:
    """The trainer's step (graphed where it can be) with the live loader at every batch size."""
    for step in ("audio", "joint"):
        for batch in setup.batches(step):
            with open_trainer(setup, step, batch) as trainer:
                batches = endless(trainer)
                warm(trainer, batches)
                rate, wait = trainer_rate(trainer, batches, setup.steps(step))
                peak = torch.cuda.max_memory_allocated(setup.device) / 1e9 if setup.cuda else NA_CPU
                results.add(f"trainer step {step} b{batch}", rate, "samples/s",
                            note=f"data wait {100 * wait:.1f}%, step: "
                                 f"{'graph' if trainer.graphed is not None else 'eager'}",
                            data_wait_fraction=wait, peak_gb=peak)


def eval_and_cache(setup: Setup, results: Results) -> None:
    """avsc-eval's scoring (`score_rows` at `loader_config_of`'s batch: 256 on CUDA) and at the
    training batch, each against a bare forward at the same batch; the embedding cache against
    the bare extractor forward."""
    from avsc_pipeline.evaluation.evaluate import loader_config_of, open_split
    from avsc_pipeline.evaluation.loading import load_scorer
    from avsc_pipeline.evaluation.scoring import score_rows
    from avsc_pipeline.testing import write_test_checkpoint

    recipe = recipe_for(setup, "joint", setup.batch)
    folder = setup.features / "train"
    ckpt = write_test_checkpoint(setup.work / "eval" / "best.pt", folder, recipe.model, loader=recipe.loader)
    scorer, artifact = load_scorer(ckpt, setup.device)
    avsc_eval = loader_config_of(artifact, None, None, str(ckpt), setup.device)
    with open_split(folder, scorer, ckpt) as dataset:
        rows = len(dataset)
        for label, config in ((f"b{setup.batch}", dataclasses.replace(avsc_eval, batch_size=setup.batch)),
                              (f"b{avsc_eval.batch_size} (avsc-eval's)", avsc_eval)):
            score_rows(dataset, scorer, config)  # warm-up (cuDNN tuning of the shapes)
            rate, _ = median_rate(lambda: len(score_rows(dataset, scorer, config)), setup.device)
            raw = dataset.read_batch(list(range(min(config.batch_size, rows))), audio_float32=False)
            with scorer.eval_mode():
                prepared = scorer.inference.prepare(raw)
                size = int(prepared["audio"].shape[0])
                bare = bare_forward_rate(lambda: scorer.inference.logits(prepared), size,
                                         max(1, rows // size), setup.device)
            results.add(f"avsc-eval scoring {label}", rate, "segments/s", baseline=bare,
                        note=f"{rows} segments, outputs kept on the device, copied once per pass")
    _cache(setup, results)


def _cache(setup: Setup, results: Results) -> None:
    from avsc_pipeline.training.embedding_cache import compute_embeddings

    with open_trainer(setup, "joint", setup.batch) as trainer:
        inputs = trainer.inputs
        import numpy as np

        rows = np.concatenate([inputs.split.train, inputs.split.validation])
        distinct = len(np.unique(inputs.dataset.frame_sources(rows)))
        compute_embeddings(trainer.inference, "video", inputs, rows)
        rate, _ = median_rate(lambda: (compute_embeddings(trainer.inference, "video", inputs, rows), distinct)[1],
                              setup.device)
        raw = inputs.dataset.read_batch(list(range(setup.batch)), audio_float32=False)
        with trainer.inference.eval_mode():
            prepared = trainer.inference.prepare(raw)
            bare = bare_forward_rate(lambda: trainer.inference.embeddings("video", prepared), setup.batch,
                                     max(1, distinct // setup.batch), setup.device)
        results.add("embedding cache (video)", rate, "segments/s", baseline=bare,
                    note=f"{distinct} distinct frame pairs; bare forward at batch {setup.batch}")


def compile_section(setup: Setup, results: Results) -> None:
    """Compiled regions of the joint model from a cold cache: the first step's time (written the
    moment it is known), then samples/s."""
    if setup.quick and not setup.cuda:
        results.add("compile", "skipped", note="--quick on the CPU: inductor takes a minute even for the tiny "
                                               "model (tests/training/test_compile_regions.py runs it)")
        return
    with open_trainer(setup, "joint", setup.batch, "train.compile=true") as trainer:
        batches = endless(trainer)
        trainer.train_step(next(batches))
        results.add("compile: joint regions, first step (cold cache)", trainer.compiler.seconds, "s",
                    note="target <= 90 s")
        warm(trainer, batches, 2)
        rate, wait = trainer_rate(trainer, batches, setup.steps("joint"))
        results.add(f"trainer step joint b{setup.batch}, compiled regions", rate, "samples/s",
                    note=f"data wait {100 * wait:.1f}%")


def packing_worker(setup: Setup) -> int:
    """A process of the packing section: builds the audio step, warms it up, says `ready`, then
    for each `run N` line on stdin runs N steps and prints their samples/s."""
    with open_trainer(setup, "audio", setup.batch) as trainer:
        ring = prefetched(trainer, endless(trainer))
        batches = cycle(ring)
        warm(trainer, batches)
        print("ready", flush=True)
        for line in sys.stdin:
            if not line.startswith("run "):
                break
            steps = int(line.split()[1])
            synchronize(setup.device)
            started = time.perf_counter()
            samples = sum(trainer.train_step(next(batches))[2] for _ in range(steps))
            synchronize(setup.device)
            print(json.dumps({"samples_per_s": samples / (time.perf_counter() - started)}), flush=True)
    return 0


def packing(setup: Setup, results: Results, worker_command: List[str]) -> None:
    """1, 2 and 4 audio-step processes on the device at once (started once, warmed up, then run
    together in groups), each on prefetched batches: total samples/s against one."""
    import subprocess

    processes = [subprocess.Popen(worker_command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  cwd=ROOT) for _ in range(4)]
    try:
        for process in processes:
            line = process.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a packing process ended before it was ready (code {process.poll()})")
        steps = setup.steps("audio")
        one = None
        for count in (1, 2, 4):
            group = processes[:count]
            for process in group:
                process.stdin.write(f"run {steps}\n")
                process.stdin.flush()
            total = sum(json.loads(process.stdout.readline())["samples_per_s"] for process in group)
            one = one or total
            results.add(f"{count} audio-step process(es), total", total, "samples/s",
                        baseline=None if count == 1 else one, note="target for 4: >= 3.5x one" if count == 4 else "")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def media_modules() -> List[str]:
    """The media modules (librosa, soundfile, av) this process imported: stage two needs none."""
    return sorted(name for name in MEDIA_MODULES if sys.modules.get(name) is not None)
