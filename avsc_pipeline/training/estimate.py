"""How long a run will take, from a short timed probe on the actual device: `--estimate`, `--plan`.

:func:`estimate_run` builds a run exactly as `avsc-train` does (the model, the training input on
the real features, the :class:`~avsc_pipeline.training.trainer.Trainer` and its step, a CUDA
graph where the run would have one), then times a few training steps on the loader's real
batches, a few batches of validation scoring and, where the run caches a frozen extractor's
embeddings, a few batches of that pass, and extrapolates to the run's epochs. Nothing is
written: no run folder, no checkpoint (the probe's steps change weights that are thrown away).

For speed the probe starts from random weights (`train.init_from` and `model.video_weights` are
dropped: a checkpoint of an earlier step need not exist yet, and weights do not change the time
a step takes), and the embedding tables it reads are zeros of the right width.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from avsc_pipeline.devices import pick_device
from avsc_pipeline.sections import Recipe
from avsc_pipeline.training.distributed import Context
from avsc_pipeline.training.embedding_cache import cacheable

logger = logging.getLogger(__name__)

#: Timed training steps of a probe.
PROBE_STEPS = 8
#: Scoring batches timed for validation and for an embedding cache.
PROBE_SCORING_BATCHES = 2


@dataclass
class Estimate:
    """What a run will cost, from a probe.

    Attributes:
        name: the run's name (a step or an ablation row).
        device: where it was probed (and would train).
        modality: audio, video or joint.
        epochs: `train.epochs`.
        rows_per_epoch: training rows an epoch reads (originals plus the sampled augmented rows).
        steps_per_epoch: optimizer steps per epoch.
        batch_size: the training batch.
        validation_rows: rows scored after every epoch.
        cached_rows: rows a frozen extractor embeds once before training (0: no cache).
        samples_per_s: the probe's training samples per second (loader, preparation, step).
        validation_segments_per_s: the probe's scoring rate (0 without validation rows).
        cache_segments_per_s: the probe's embedding rate (0 without a cache).
        warmup_s: the probe's first steps (cuDNN tuning, graph capture, compilation).
        step: `graph` or `eager`: how the training step ran.
        seconds: the estimated wall time of the run.
    """

    name: str
    device: str
    modality: str
    epochs: int
    rows_per_epoch: int
    steps_per_epoch: int
    batch_size: int
    validation_rows: int
    cached_rows: int
    samples_per_s: float
    validation_segments_per_s: float
    cache_segments_per_s: float
    warmup_s: float
    step: str
    seconds: float

    @property
    def hours(self) -> float:
        """The estimated wall time in hours."""
        return self.seconds / 3600.0


def probe_recipe(recipe: Recipe) -> Recipe:
    """The recipe the probe trains: random initial weights, everything else as given."""
    return recipe.replace(train=dataclasses.replace(recipe.train, init_from=None),
                          model=dataclasses.replace(recipe.model, video_weights=None))


def estimate_run(name: str, features_dir: "str | Path", recipe: Recipe, device: str = "auto",
                 given_features: Optional[dict] = None, probe_steps: int = PROBE_STEPS) -> Estimate:
    """Probe one run on `device` and estimate its wall time (trains nothing that is kept).

    Args:
        name: what the estimate is called in tables.
        features_dir: the stage-one output folder the run would read.
        recipe: the run's resolved recipe.
        device: `auto`, `cpu`, `cuda` or `cuda:N`.
        given_features: the `features:` keys the config files give (checked as training does).
        probe_steps: timed training steps.

    Raises:
        ValueError: bad input, as `avsc-train` would raise it.
    """
    from avsc_pipeline.training.graphed_step import WARMUP_STEPS
    from avsc_pipeline.training.run import build_trainer, built_input, read_recipe

    if not isinstance(probe_steps, int) or probe_steps < 1:
        raise ValueError(f"expected probe_steps >= 1, got {probe_steps!r}")
    context = Context(pick_device(device))
    recipe, classes = read_recipe(context, Path(features_dir), probe_recipe(recipe), given_features)
    with built_input(context, Path(features_dir), recipe, classes) as (model, inputs), \
            tempfile.TemporaryDirectory(prefix="avsc-estimate-") as scratch:
        caches, cached_rows = _stand_in_caches(model, inputs, recipe)
        trainer = build_trainer(context, recipe, model, inputs, Path(scratch), progress=False, caches=caches)
        warmup = 2 + (WARMUP_STEPS + 1 if trainer.graphed is not None else 0) + (2 if recipe.train.compile else 0)
        warmup_s, samples_per_s = _probe_steps(trainer, warmup, probe_steps)
        validation = trainer.inputs.split.validation
        val_rate = _probe_scoring(trainer, validation) if len(validation) else 0.0
        cache_rate = _probe_cache(trainer, caches) if caches else 0.0
        rows = len(inputs.train_sampler)
        seconds = recipe.train.epochs * (rows / samples_per_s + (len(validation) / val_rate if val_rate else 0.0))
        seconds += cached_rows / cache_rate if cache_rate else 0.0
        return Estimate(name=name, device=str(context.device), modality=model.modality, epochs=recipe.train.epochs,
                        rows_per_epoch=rows, steps_per_epoch=trainer.steps_per_epoch,
                        batch_size=recipe.loader.batch_size, validation_rows=len(validation), cached_rows=cached_rows,
                        samples_per_s=samples_per_s, validation_segments_per_s=val_rate,
                        cache_segments_per_s=cache_rate, warmup_s=warmup_s,
                        step="graph" if trainer.graphed is not None else "eager", seconds=seconds)


def _stand_in_caches(model: Any, inputs: Any, recipe: Recipe) -> "tuple[Dict[str, torch.Tensor], int]":
    """Zero embedding tables where the run would cache a frozen extractor, and the rows that
    cache would embed (each distinct frame pair once for video)."""
    caches: Dict[str, torch.Tensor] = {}
    rows = np.concatenate([inputs.split.train, inputs.split.augmented, inputs.split.validation])
    embedded = 0
    for part, ok in cacheable(model.frozen_audio, model.frozen_video, recipe.train, recipe.batch_augment).items():
        if ok:
            width = (model.audio if part == "audio" else model.video).embed_dim
            caches[part] = torch.zeros(len(inputs.dataset), width, device=inputs.device)
            embedded += len(np.unique(_frame_sources(inputs, rows))) if part == "video" else len(rows)
    return caches, embedded


def _frame_sources(inputs: Any, rows: np.ndarray) -> np.ndarray:
    """The rows' frame sources, from a dataset that reads frames (a run that caches its frozen
    video extractor reads none with its batches; the cache opens its own, as here)."""
    from avsc_pipeline.dataio.dataset import ShardDataset

    if inputs.dataset.with_video:
        return inputs.dataset.frame_sources(rows)
    with ShardDataset(inputs.folders, with_video=True) as dataset:
        return dataset.frame_sources(rows)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _probe_steps(trainer: Any, warmup: int, steps: int) -> "tuple[float, float]":
    """Seconds of `warmup` steps and samples/s of the next `steps`, on the loader's batches
    (more epochs than one when the data set is small)."""
    trainer.model.train()
    trainer.inputs.preparer.train()
    sampler = trainer.inputs.train_sampler
    loader = trainer.inputs.loader(sampler)
    epoch, batches = 0, None

    def next_batch() -> Dict[str, Any]:
        nonlocal epoch, batches
        while True:
            if batches is None:
                sampler.set_epoch(epoch)
                batches = iter(loader)
            raw = next(batches, None)
            if raw is not None:
                return raw
            if epoch > warmup + steps:
                raise ValueError("expected training batches, got none (fewer rows than one batch?)")
            epoch, batches = epoch + 1, None

    device = trainer.device
    started = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step(next_batch(), boundary=True)
    _synchronize(device)
    timed = time.perf_counter()
    samples = 0
    for i in range(steps):
        samples += trainer.train_step(next_batch(), boundary=(i + 1) % trainer.train_cfg.grad_accum == 0)[2]
    _synchronize(device)
    elapsed = time.perf_counter() - timed
    del batches
    loader.release_unreferenced()
    return timed - started, samples / max(elapsed, 1e-9)


def _probe_scoring(trainer: Any, validation: np.ndarray) -> float:
    """Segments/s of validation scoring (the trainer's scorer, at its scoring batch)."""
    from avsc_pipeline.evaluation.scoring import score_rows, scoring_config, scoring_loader

    config = scoring_config(trainer.loader_cfg, trainer.device)
    rows = validation[:PROBE_SCORING_BATCHES * config.batch_size]
    # one loader, its workers kept between the passes as validation keeps them between epochs
    loader = scoring_loader(trainer.inputs.dataset, rows, config, trainer.device)
    score_rows(trainer.inputs.dataset, trainer.scorer, config, rows=rows, loader=loader)  # warm-up
    _synchronize(trainer.device)
    started = time.perf_counter()
    score_rows(trainer.inputs.dataset, trainer.scorer, config, rows=rows, loader=loader)
    _synchronize(trainer.device)
    return len(rows) / max(time.perf_counter() - started, 1e-9)


def _probe_cache(trainer: Any, caches: Dict[str, torch.Tensor]) -> float:
    """Segments/s of the embedding pass of the cached extractors (a few scoring batches)."""
    from avsc_pipeline.evaluation.scoring import scoring_config
    from avsc_pipeline.training.embedding_cache import compute_embeddings

    inputs = trainer.inputs
    size = scoring_config(trainer.loader_cfg, trainer.device).batch_size  # the cache's own batch
    rows = inputs.split.train[:PROBE_SCORING_BATCHES * size]
    rates: List[float] = []
    for part in caches:
        compute_embeddings(trainer.inference, part, inputs, rows[:size])  # warm-up
        _synchronize(trainer.device)
        started = time.perf_counter()
        compute_embeddings(trainer.inference, part, inputs, rows)
        _synchronize(trainer.device)
        rates.append(len(rows) / max(time.perf_counter() - started, 1e-9))
    return 1.0 / sum(1.0 / rate for rate in rates)  # the parts run one after the other


def format_estimates(estimates: List[Estimate], kept: Optional[Dict[str, str]] = None) -> str:
    """A Markdown table of estimates (and of runs `kept` as they are, with the reason), with the
    total."""
    lines = ["| run | model | step | epochs | rows/epoch | steps/epoch | samples/s | validation seg/s | "
             "estimated wall time |", "|---|---|---|---|---|---|---|---|---|"]
    for name, reason in (kept or {}).items():
        lines.append(f"| {name} | | | | | | | | {reason} |")
    for e in estimates:
        val = f"{e.validation_segments_per_s:.0f}" if e.validation_segments_per_s else "-"
        lines.append(f"| {e.name} | {e.modality} | {e.step} | {e.epochs} | {e.rows_per_epoch} | {e.steps_per_epoch} "
                     f"| {e.samples_per_s:.1f} | {val} | {_clock(e.seconds)} ({e.hours:.2f} h) |")
    total = sum(e.seconds for e in estimates)
    device = estimates[0].device if estimates else "-"
    lines += ["", f"Total: {total / 3600:.2f} hours ({_clock(total)}) on {device}, one run after another; each "
              "figure is a probe of a few steps on this device (the first steps, with tuning and capture, left out)."]
    return "\n".join(lines) + "\n"


def _clock(seconds: float) -> str:
    minutes = int(math.ceil(seconds / 60.0))
    return f"{minutes // 60} h {minutes % 60:02d} min"
