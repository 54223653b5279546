"""Packed runs: several independent trainings at once, K per device, each its own process.

A training at the paper's batch of 32 leaves a large GPU mostly idle (the step is launch-bound),
so several runs side by side finish in little more time than one. :func:`run_packed` runs the
given steps (e.g. the rows of an ablation table) in `K x devices` processes: every visible GPU
takes K of them at a time (on the CPU, K processes). Each process runs the same
:func:`~avsc_pipeline.recipe.run_step` a sequential run calls, seeded from its own recipe, with
the parent's torch thread count, so its results are those of running the steps one at a time.

The processes are started with `spawn` (a CUDA context cannot be forked). A process takes a
device from a shared queue of tokens when it starts a step and gives it back when it ends.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from avsc_pipeline.recipe import Step

logger = logging.getLogger(__name__)


def packed_devices(device: str, per_device: int) -> List[str]:
    """The device of each of the `per_device x devices` process slots: `per_device` per visible
    GPU for `auto` (or `cuda`) on a machine with CUDA, `per_device` times the named device for
    `cuda:N` or `cpu`.

    Raises:
        ValueError: `per_device` < 1.
    """
    if not isinstance(per_device, int) or isinstance(per_device, bool) or per_device < 1:
        raise ValueError(f"expected per_device >= 1, got {per_device!r}")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    elif device == "auto":
        gpus = ["cpu"]
    else:
        gpus = [device]
    return [gpu for _ in range(per_device) for gpu in gpus]


def run_packed(steps: Sequence[Step], features: Path, device: str = "auto", per_device: int = 2,
               progress: bool = False) -> Dict[str, Dict[str, Any]]:
    """Run independent steps at once, `per_device` per device, each in its own process.

    Args:
        steps: steps that do not depend on each other (no step starts from another's
            `best.pt`; run those in a later call).
        features: the stage-one output folder.
        device: `auto` (every visible GPU, else the CPU), `cpu`, `cuda` or `cuda:N`.
        per_device: processes per device.
        progress: progress bars (they interleave; off by default).

    Returns:
        `{step name: its row}` as :func:`~avsc_pipeline.recipe.run_step` returns it, in the
        order of `steps`.

    Raises:
        Whatever a step raised (the first failure, after the running steps end).
    """
    slots = packed_devices(device, per_device)
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    try:
        tokens = manager.Queue()
        for slot in slots:
            tokens.put(slot)
        threads = torch.get_num_threads()
        logger.info("packed: %d step(s) in %d process(es) (%s)", len(steps), min(len(slots), len(steps)),
                    ", ".join(sorted(set(slots))))
        with ProcessPoolExecutor(max_workers=min(len(slots), max(1, len(steps))), mp_context=context) as pool:
            futures = [pool.submit(_run_one, step, Path(features), tokens, threads, progress,
                                   logging.getLogger("avsc_pipeline").getEffectiveLevel())
                       for step in steps]
            return {step.name: future.result() for step, future in zip(steps, futures)}
    finally:
        manager.shutdown()


def _run_one(step: Step, features: Path, tokens: Any, threads: int, progress: bool, level: int) -> Dict[str, Any]:
    """In a packed process: take a device, run the step there, give the device back."""
    from avsc_pipeline.recipe import run_step

    root = logging.getLogger("avsc_pipeline")
    handler = next((h for h in root.handlers if getattr(h, "packed", False)), None)
    if handler is None:  # a spawned process starts without the parent's logging
        handler = logging.StreamHandler()
        handler.packed = True
        root.addHandler(handler)
    handler.setFormatter(logging.Formatter(f"%(levelname)s [{step.name}] %(name)s: %(message)s"))
    root.setLevel(level)
    torch.set_num_threads(threads)  # as the parent: the same float rounding as one at a time
    device = tokens.get()
    try:
        logger.info("step %s on %s", step.name, device)
        return run_step(step, features, device, progress)
    finally:
        tokens.put(device)
