"""Training speed: the demo config on the CPU, the paper model per batch, embedding caching, CUDA.

(a) Samples/s of one epoch of each demo step (audio, video, joint) through the real trainer
    (`train_run` on the demo features, `train.epochs=1`), read from the run's metrics.csv with
    its `data_wait_fraction` (share of the epoch spent in `next(loader)`; target: under 10%).
    Baseline: the loader alone, i.e. the same training input (`build_training_input`, as
    `avsc-train` builds it: loader and BatchPreparer in train mode, the step's batch augmentation)
    iterated over the same epoch without a model. Printed: training / loader-alone.
(b) Forward+backward+Adam step of the full paper model (FCNN + DenseNet-161 on two 224x224
    frames + MLP, random weights) per batch of 32, after one warm-up; also the audio FCNN and
    the video-only DenseNet-161 model. Baseline: the forward pass alone (no grad, train mode, so
    that only backward and the step differ) of the same batch. A batch runs as micro-batches
    (`--micro-batch`, default 8) with gradients accumulated: 8 segments peak at about 6 GB in
    float32 on the CPU, so a whole batch of 32 would need roughly 4x that (not measured), more
    than a shared 23 GB machine has free.
(c) Caching frozen DenseNet-161 embeddings (`compute_embeddings`, batches of 32) of `--rows`
    generated rows, scaled to 1,000 segments. Baseline: the bare VideoExtractor forward on random
    frames of the same count and batch size (no grad, eval mode). The ratio is the overhead of
    reading and preparing the frames.
(d) With CUDA: paper-model training samples/s with bf16 autocast + channels-last against fp32,
    and peak GPU memory of each.

Baselines and candidates run alternately and the best repetition of each counts, so load from
other processes on a shared machine affects both alike; every repetition is printed too.

Run: .venv/bin/python bench/bench_train.py [--repeat 2] [--rows 128] [--micro-batch 8] [--skip-paper]
         [--features data/demo-features] [--threads N]
On an idle 2-core CPU one repetition takes a few minutes; when other processes hold a core,
torch's two OpenMP threads wait on each other and single figures swing by 10x or more, so read
the per-repetition figures printed beside the best (or compare with `--threads 1`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from avsc_pipeline.sections.loading import LoaderConfig
from avsc_pipeline.dataio.training_input import TrainingInput, build_training_input
from avsc_pipeline.models.classifier import build_model
from avsc_pipeline.sections.model import ModelConfig
from avsc_pipeline.inference import Inference
from avsc_pipeline.sections import Recipe, load_recipe
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.storage.shards import shard_name
from avsc_pipeline.testing import write_random_shard
from avsc_pipeline.training.embedding_cache import cacheable, compute_embeddings
from avsc_pipeline.training.losses import soft_target_cross_entropy
from avsc_pipeline.training.run import train_run
from avsc_pipeline.training.run_dir import METRICS_NAME

STEPS = ("audio", "video", "joint")
FEATURE_CANDIDATES = (Path("data/demo-features"), Path("/tmp/demofeat_before"))
BATCH = 32
NUM_CLASSES = 10
WAIT_TARGET = 0.10


def fmt_all(values: Sequence[float], spec: str = ".1f") -> str:
    return ", ".join(format(v, spec) for v in values)


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


# -- (a) the demo config through the real trainer ---------------------------------------------


def find_features(given: Optional[Path]) -> Path:
    for folder in [given] if given else FEATURE_CANDIDATES:
        if folder is not None and (folder / "train" / "index.json").is_file():
            return folder
    where = given or " or ".join(map(str, FEATURE_CANDIDATES))
    raise SystemExit(f"expected demo features (train/index.json) in {where}; run `make demo` first")


def demo_recipe(step: str) -> Recipe:
    """The demo config of one step for one epoch (the joint step without an audio run to start
    from); the run records the demo shards' own feature config."""
    files = ["configs/paper.yaml", f"configs/steps/{step}.yaml", "configs/demo.yaml", f"configs/demo/{step}.yaml"]
    overrides = ["train.epochs=1"] + (["train.init_from=null"] if step == "joint" else [])
    return load_recipe(files, overrides)


def train_epoch(features: Path, recipe: Recipe, run_dir: Path) -> Dict[str, float]:
    """One epoch of the real trainer; its metrics.csv row."""
    train_run(features, run_dir, recipe, device="cpu", progress=False)
    with open(run_dir / METRICS_NAME, newline="") as handle:
        row = list(csv.DictReader(handle))[-1]
    return {key: float(row[key]) for key in ("samples_per_s", "data_wait_fraction", "seconds")}


def loader_epoch(features: Path, recipe: Recipe) -> Dict[str, float]:
    """The trainer's epoch without the model: same rows, sampler, loader and BatchPreparer (train
    mode, the step's batch augmentation). Worker start-up counts, as in the trainer's epoch."""
    train, model_config = recipe.train, recipe.model
    video_cached = cacheable(False, train.freeze_video and model_config.uses_video, train,
                             recipe.batch_augment)["video"]
    inputs = build_training_input(features, recipe.loader, recipe.batch_augment, "cpu", train.seed,
                                  with_video=model_config.uses_video and not video_cached)
    try:
        preparer = inputs.preparer.train()
        inputs.train_sampler.set_epoch(0)
        loader = inputs.loader(inputs.train_sampler)
        count, first, read = 0, None, 0.0
        started = time.perf_counter()
        iterator = iter(loader)
        while True:
            fetch = time.perf_counter()
            raw = next(iterator, None)
            read += time.perf_counter() - fetch
            if raw is None:
                break
            if first is None:
                first = time.perf_counter() - started
            count += len(preparer(raw)["index"])
        elapsed = time.perf_counter() - started
        loader.release_unreferenced()
    finally:
        inputs.close()
    return {"samples_per_s": count / elapsed, "first_batch_s": first or 0.0,
            "batches": count // inputs.loader_config.batch_size,
            "seconds": elapsed, "read_s": read, "prepare_s": elapsed - read}


def bench_demo_training(features: Path, repeat: int, tmp: Path) -> None:
    print(f"(a) demo config, 1 epoch per step on the CPU ({features}), torch threads {torch.get_num_threads()}, "
          f"best of {repeat}")
    for step in STEPS:
        recipe = demo_recipe(step)
        runs: List[Dict[str, float]] = []
        alone: List[Dict[str, float]] = []
        for rep in range(repeat):
            alone.append(loader_epoch(features, recipe))
            runs.append(train_epoch(features, recipe, tmp / f"{step}-{rep}"))
        best = max(runs, key=lambda r: r["samples_per_s"])
        base = max(alone, key=lambda r: r["samples_per_s"])
        waits = [r["data_wait_fraction"] for r in runs]
        verdict = "met" if min(waits) < WAIT_TARGET else "NOT met"
        print(f"  {step:5s} training        {best['samples_per_s']:8.1f} samples/s "
              f"(each: {fmt_all([r['samples_per_s'] for r in runs])}), {base['batches']} batches, "
              f"epoch {best['seconds']:.1f} s")
        print(f"        data wait       {100 * best['data_wait_fraction']:8.1f} % of the step time in the best run "
              f"(each: {fmt_all([100 * w for w in waits])} %; target < {100 * WAIT_TARGET:.0f}%: {verdict})")
        print(f"        loader alone    {base['samples_per_s']:8.1f} samples/s (baseline; each: "
              f"{fmt_all([r['samples_per_s'] for r in alone])}), first batch after "
              f"{min(r['first_batch_s'] for r in alone):.2f} s (worker start), epoch {base['seconds']:.1f} s")
        print(f"          of which        waiting for batches {base['read_s']:.1f} s, "
              f"BatchPreparer {base['prepare_s']:.1f} s "
              f"= {100 * base['prepare_s'] / best['seconds']:.0f}% of the training epoch (inside the step, so not "
              f"in data wait)")
        print(f"        training / loader-alone  {best['samples_per_s'] / base['samples_per_s']:5.3f}x")


# -- (b) the paper model per batch on the CPU -------------------------------------------------


def paper_inputs(step: str, batch: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    inputs = {}
    if step in ("audio", "joint"):
        inputs["audio"] = torch.randn(batch, 6, 128, 39, generator=gen)
    if step in ("video", "joint"):
        inputs["video"] = torch.randn(batch, 2, 3, 224, 224, generator=gen)
    return inputs


def paper_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro: Sequence[Dict[str, torch.Tensor]],
               target: torch.Tensor) -> None:
    """One optimizer step over a batch given as micro-batches (gradients accumulated)."""
    start = 0
    for inputs in micro:
        size = next(iter(inputs.values())).shape[0]
        loss = soft_target_cross_entropy(model(**inputs), target[start:start + size]) * (size / len(target))
        loss.backward()
        start += size
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def paper_forward(model: torch.nn.Module, micro: Sequence[Dict[str, torch.Tensor]]) -> None:
    for inputs in micro:
        model(**inputs)


def bench_paper_model(repeat: int, micro_batch: int) -> None:
    parts = -(-BATCH // micro_batch)
    print(f"(b) paper model (ModelConfig(), random weights) per batch of {BATCH} on the CPU, "
          f"as {parts} micro-batch(es) of {micro_batch}, 1 warm-up, best of {repeat}")
    target = torch.eye(NUM_CLASSES)[torch.arange(BATCH) % NUM_CLASSES]
    names = {"joint": "joint (FCNN + DenseNet-161 x2 frames + MLP)", "audio": "audio FCNN alone",
             "video": "video only (DenseNet-161 x2 frames + MLP)"}
    for step in ("joint", "audio", "video"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(modality=step), NUM_CLASSES, load_weights=False).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-5)
        micro = [paper_inputs(step, min(micro_batch, BATCH - s), seed=s) for s in range(0, BATCH, micro_batch)]
        paper_step(model, optimizer, micro[:1], target[:micro_batch])  # warm-up: oneDNN primitives, allocator
        paper_forward(model, micro[:1])
        train_times, forward_times = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            paper_forward(model, micro)
            forward_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            paper_step(model, optimizer, micro, target)
            train_times.append(time.perf_counter() - start)
        step, forward = min(train_times), min(forward_times)
        print(f"  {names[step]}")
        print(f"    forward+backward+Adam {step:7.2f} s/batch ({BATCH / step:6.1f} samples/s; each: "
              f"{fmt_all(train_times, '.2f')} s)")
        print(f"    forward only          {forward:7.2f} s/batch (baseline; each: {fmt_all(forward_times, '.2f')} s)")
        print(f"    train step / forward  {step / forward:5.2f}x   peak process RSS so far {peak_rss_gb():.1f} GB")
        del model, optimizer, micro


# -- (c) caching frozen DenseNet-161 embeddings -----------------------------------------------


def generated_run_data(folder: Path, rows: int) -> TrainingInput:
    """A train folder of `rows` random rows with frames, as a run sees it."""
    per_shard = 200
    for number, start in enumerate(range(0, rows, per_shard)):
        write_random_shard(folder / "train" / shard_name(number), min(per_shard, rows - start), seed=number)
    build_index(folder / "train")
    loader = LoaderConfig(val_fraction=0.0, num_workers=2, persistent_workers=False, batch_size=BATCH)
    return build_training_input(folder, loader, None, "cpu", with_video=True)


def bench_embeddings(rows: int, repeat: int, tmp: Path) -> None:
    print(f"(c) frozen DenseNet-161 embeddings of {rows} generated rows (batches of {BATCH}, 2 frames each, "
          f"2 loader workers), scaled to 1,000 segments, best of {repeat}")
    data = generated_run_data(tmp / "embed", rows)
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig(modality="video"), len(data.classes), load_weights=False)
        model.set_frozen(video=True)
        extractor = model.video
        frames = torch.randn(BATCH, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        row_ids = np.arange(rows)

        inference = Inference(model, data.preparer, "cpu")

        def cached() -> None:
            compute_embeddings(inference, "video", data, row_ids)

        @torch.no_grad()
        def bare() -> None:
            extractor.eval()
            for start in range(0, rows, BATCH):
                extractor(frames[:min(BATCH, rows - start)])

        with torch.no_grad():
            extractor.eval()(frames)  # warm-up: oneDNN primitives of this batch shape
        cached_times, bare_times = [], []
        for _ in range(repeat):
            for fn, times in ((bare, bare_times), (cached, cached_times)):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
    finally:
        data.close()
    scale = 1000 / rows
    best_cached, best_bare = min(cached_times) * scale, min(bare_times) * scale
    print(f"  compute_embeddings       {best_cached:7.1f} s per 1,000 segments (each: "
          f"{fmt_all([t * scale for t in cached_times])} s)")
    print(f"  bare VideoExtractor      {best_bare:7.1f} s per 1,000 segments (baseline; each: "
          f"{fmt_all([t * scale for t in bare_times])} s)")
    print(f"  cached / bare forward    {best_cached / best_bare:5.3f}x (reading + preparing overhead "
          f"{100 * (best_cached / best_bare - 1):+.1f}%)")


# -- (d) CUDA: bf16 + channels-last against fp32 ----------------------------------------------


def cuda_train_rate(channels_last: bool, amp: Optional[torch.dtype], steps: int) -> Tuple[float, float]:
    """Samples/s and peak GPU memory (GB) of paper-model training steps on whole batches of 32."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(ModelConfig(), NUM_CLASSES, load_weights=False).to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-5)
    inputs = {k: v.to(device) for k, v in paper_inputs("joint", BATCH).items()}
    if channels_last:
        inputs["audio"] = inputs["audio"].contiguous(memory_format=torch.channels_last)
    target = torch.eye(NUM_CLASSES, device=device)[torch.arange(BATCH, device=device) % NUM_CLASSES]

    def step() -> None:
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            logits = model(**inputs)
        soft_target_cross_entropy(logits.float(), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    rate = steps * BATCH / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 1e9
    del model, optimizer, inputs
    torch.cuda.empty_cache()
    return rate, peak


def bench_cuda(repeat: int) -> None:
    if not torch.cuda.is_available():
        print("(d) CUDA: not available here; the bf16 + channels-last and peak-memory figures need a GPU machine")
        return
    torch.backends.cudnn.benchmark = True
    steps = 20
    print(f"(d) paper model training on {torch.cuda.get_device_name()}, batches of {BATCH}, {steps} steps, "
          f"best of {repeat}")
    modes = {"fp32 (baseline)": (False, None), "bf16 autocast + channels-last": (True, torch.bfloat16)}
    results: Dict[str, List[Tuple[float, float]]] = {name: [] for name in modes}
    for _ in range(repeat):
        for name, (channels_last, amp) in modes.items():
            results[name].append(cuda_train_rate(channels_last, amp, steps))
    base = max(rate for rate, _ in results["fp32 (baseline)"])
    for name, values in results.items():
        rate = max(r for r, _ in values)
        print(f"  {name:30s} {rate:7.1f} samples/s  {rate / base:5.2f}x  peak GPU memory "
              f"{max(p for _, p in values):5.2f} GB (each: {fmt_all([r for r, _ in values])} samples/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="repetitions of every figure (the best counts)")
    parser.add_argument("--rows", type=int, default=128, help="generated rows whose embeddings (c) caches")
    parser.add_argument("--micro-batch", type=int, default=8, help="micro-batch of (b) on the CPU (memory)")
    parser.add_argument("--skip-paper", action="store_true", help="skip (b) and (c), DenseNet-161 on the CPU")
    parser.add_argument("--features", type=Path, default=None, help="demo features folder (train/, train-aug/)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 suits a 2-core machine that others are using")
    args = parser.parse_args()
    if args.repeat < 1 or args.rows < 1 or args.threads < 0 or not 1 <= args.micro_batch <= BATCH:
        parser.error(f"expected --repeat >= 1, --rows >= 1, --threads >= 0 and 1 <= --micro-batch <= {BATCH}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # The demo's small CNN has no pre-trained weights by design: its warning would repeat every run.
    logging.getLogger("avsc_pipeline.models.classifier").setLevel(logging.ERROR)
    features = find_features(args.features)
    began = time.perf_counter()
    print(f"load average at start {fmt_all(os.getloadavg(), '.2f')} on {os.cpu_count()} cores "
          "(other processes share this machine)")
    with tempfile.TemporaryDirectory() as tmp:
        bench_demo_training(features, args.repeat, Path(tmp))
        if args.skip_paper:
            print("(b), (c) skipped (--skip-paper)")
        else:
            bench_paper_model(args.repeat, args.micro_batch)
            bench_embeddings(args.rows, args.repeat, Path(tmp))
    bench_cuda(args.repeat)
    print(f"total {time.perf_counter() - began:.0f} s, load average at end {fmt_all(os.getloadavg(), '.2f')}")


if __name__ == "__main__":
    main()
