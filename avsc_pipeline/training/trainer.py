"""The training loop: `fit`, `train_one_epoch`, `validate`, checkpoints and resumption.

A :class:`Trainer` receives built parts (the model, the training input of
:func:`~avsc_pipeline.dataio.training_input.build_training_input`, the embedding caches) and
owns the optimizer, schedule and loop. Every epoch it writes `last.pt` (and `best.pt` on the
best validation figure) through the one checkpoint writer; SIGINT and SIGTERM finish the current
optimizer step, write `last.pt` and stop, and `--resume` continues from there: with
`train.deterministic` on CPU the resumed run ends with exactly the weights of an uninterrupted
one. Validation scores through the :class:`~avsc_pipeline.evaluation.scoring.Scorer` that
`avsc-eval` uses, so `metrics.csv` and `avsc-eval` agree.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from avsc_pipeline.dataio.loader import ShardLoader
from avsc_pipeline.dataio.training_input import TrainingInput
from avsc_pipeline.evaluation.temperature import TemperatureDecision, decide_temperature
from avsc_pipeline.evaluation.metrics import score
from avsc_pipeline.evaluation.scoring import Scorer, score_rows, scoring_config, scoring_loader
from avsc_pipeline.inference import Inference
from avsc_pipeline.models.checkpoint import ModelArtifact, ResumeState, save_checkpoint
from avsc_pipeline.sections import Recipe
from avsc_pipeline.training import rng_state
from avsc_pipeline.training.distributed import (
    Context, all_sum, broadcast_buffers, broadcast_flag, gather_objects, unwrap,
)
from avsc_pipeline.training.compile_regions import RunCompiler, compile_regions
from avsc_pipeline.training.embedding_cache import embedding_means
from avsc_pipeline.training.graphed_step import GraphedStep, StepParts, train_step
from avsc_pipeline.training.meter import EpochMeter
from avsc_pipeline.training.tensorboard import Board
from avsc_pipeline.training.optim import build_optimizer, build_scheduler
from avsc_pipeline.training.run_dir import BEST_NAME, CURVES_NAME, LAST_NAME, METRICS_NAME, write_metrics

logger = logging.getLogger(__name__)


class Trainer:
    """One training run.

    Args:
        recipe: the run's resolved recipe (`features` = the shards' feature config).
        inputs: the run's shards, split, sampler, statistics and batch preparer.
        inference: the run's forward path: the model (initialized and frozen as configured) on
            `context.device`, the training input's preparer, memory format and precision.
        caches: embedding tables of frozen, unaugmented extractors (see `embedding_cache`).
        run_dir: where checkpoints, metrics and curves go (rank 0 writes).
        context: device, rank and world size.
        progress: show progress bars.
    """

    def __init__(self, recipe: Recipe, inputs: TrainingInput, inference: Inference,
                 caches: Dict[str, torch.Tensor], run_dir: Path, context: Context, progress: bool = True) -> None:
        if not isinstance(recipe, Recipe):
            raise TypeError(f"expected a Recipe, got {type(recipe).__name__}")
        self.recipe, self.inputs, self.caches, self.inference = recipe, inputs, caches, inference
        self.run_dir, self.context, self.device = Path(run_dir), context, context.device
        self.train_cfg, self.loader_cfg = recipe.train, recipe.loader
        self.progress = progress and context.is_main
        model = self.model = inference.model
        self.compiler: Optional[RunCompiler] = None  # set by _wrap with train.compile
        self.step_model = self._wrap(model)
        self.optimizer = build_optimizer(model.parameters(), self.train_cfg, self.device)
        self.steps_per_epoch = max(1, math.ceil(self._batches_per_epoch() / self.train_cfg.grad_accum))
        self.scheduler = build_scheduler(self.optimizer, self.train_cfg, self.steps_per_epoch)
        self.precision = inference.precision
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == torch.float16)
        self.scorer = Scorer(inference, list(inputs.classes), inputs.dataset.feature_config, model.modality,
                             cached=caches)
        self.parts = StepParts(inference, self.step_model, self.optimizer, self.scaler, caches,
                               self.train_cfg.grad_accum, self.train_cfg.grad_clip)
        self.graphed = GraphedStep.for_run(self.parts, self.train_cfg)  # None: the eager step (logged why)
        self._last_lr = self.optimizer.param_groups[0]["lr"]
        self.epoch, self.step, self.epoch_batches = 0, 0, 0
        self._validation: Optional[tuple] = None  # the last validation's (probabilities, labels)
        self._val_loader: Optional[ShardLoader] = None  # made at the first validation, kept
        self.board = Board(self.run_dir, self.train_cfg.tensorboard, self.train_cfg.tensorboard_every,
                           context.is_main, context.world_size)
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None
        self._stop_signal: Optional[int] = None

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.context.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Parameters the forward never reaches (e.g. the FCNN's head behind
            # `audio_embedding: block3`) are frozen by the model builder, so no unused-parameter
            # search is needed.
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if self.train_cfg.compile:
            mode = None if self.train_cfg.compile_mode == "default" else self.train_cfg.compile_mode
            self.compiler = RunCompiler(self.run_dir, self.train_cfg.compile_scope)
            self.compiler.prepare()  # the run folder's compiler cache (a warm start on --resume)
            if self.train_cfg.compile_scope == "regions":
                logger.info("compile: regions %s", ", ".join(compile_regions(self.model, mode)))
            else:  # compiled after DDP, so that gradient buckets overlap with the backward
                module = torch.compile(module, mode=mode)
        return module

    def _batches_per_epoch(self) -> int:
        size, batch = len(self.inputs.train_sampler), self.loader_cfg.batch_size
        return size // batch if self.loader_cfg.drop_last and size >= batch else math.ceil(size / batch)

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> Dict[str, Any]:
        """Train from the current epoch to `train.epochs`; returns the last epoch's metrics row.

        Stops early (after writing `last.pt`) on SIGINT or SIGTERM; then `stopped_by` in the
        returned row names the signal.
        """
        sampler = self.inputs.train_sampler
        loader = self.inputs.loader(sampler)
        row: Dict[str, Any] = self.history[-1] if self.history else {}
        with _stop_signals(self._on_signal), self.board:
            while self.epoch < self.train_cfg.epochs:
                logger.info("epoch %d/%d started", self.epoch + 1, self.train_cfg.epochs)
                sampler.set_epoch(self.epoch)
                epoch_loader = loader if self.epoch_batches == 0 else self._resumed_loader()
                lr_first = self.optimizer.param_groups[0]["lr"]
                train_metrics = self.train_one_epoch(epoch_loader)
                if self._stop_signal is not None:
                    self.save(self.run_dir / LAST_NAME)
                    logger.warning("stopped by signal %d in epoch %d after %d batches; last.pt written, "
                                   "--resume continues", self._stop_signal, self.epoch + 1, self.epoch_batches)
                    return {**row, "stopped_by": self._stop_signal}
                row = {"epoch": self.epoch + 1, **train_metrics, **self.validate(), "lr": lr_first,
                       "lr_last": self._last_lr}
                self.epoch, self.epoch_batches = self.epoch + 1, 0
                self.history.append(row)
                self._end_epoch(row)
        return row

    def _resumed_loader(self) -> ShardLoader:
        skip = self.epoch_batches * self.loader_cfg.batch_size
        return self.inputs.loader(_SkipFirst(self.inputs.train_sampler, skip))

    def train_one_epoch(self, loader: ShardLoader) -> Dict[str, float]:
        """One pass over the epoch's batches (from `self.epoch_batches` on when resuming).

        Returns:
            `train_loss`, `train_accuracy` (against the dominant target class), `samples_per_s`,
            `data_wait_fraction` (share of the epoch spent waiting for a batch) and `seconds`.
        """
        from tqdm import tqdm

        self.model.train()
        self.inputs.preparer.train()
        accum = self.train_cfg.grad_accum
        sums = torch.zeros(2, device=self.device, dtype=torch.float64)  # loss sum, correct
        meter = EpochMeter()
        total = self._batches_per_epoch()
        bar = tqdm(total=total, initial=self.epoch_batches, desc=f"epoch {self.epoch + 1}/{self.train_cfg.epochs}",
                   unit="batch", disable=not self.progress, leave=False)
        self._last_lr = self.optimizer.param_groups[0]["lr"]
        iterator = iter(loader)
        while True:
            meter.fetching()
            raw = next(iterator, None)
            meter.fetched()
            if raw is None:
                break
            done = self.epoch_batches + 1
            # The epoch's last batch closes a partial accumulation (its gradients synchronized).
            loss, correct, count = self.train_step(raw, boundary=done % accum == 0 or done >= total)
            sums[0] += loss.detach().double() * count
            sums[1] += correct
            meter.add(count)
            self.epoch_batches += 1
            self.board.batch(self.step, loss, correct, count, self._last_lr, meter.samples_per_s,
                             meter.waited / meter.elapsed)
            bar.update(1)
            if self.progress and self.epoch_batches % 10 == 0:
                bar.set_postfix(samples_s=f"{meter.samples_per_s:.1f}")
            if self.epoch_batches % accum == 0 and self._should_stop():
                break
        bar.close()
        totals = all_sum(torch.cat([sums, torch.tensor([float(meter.samples)], device=self.device,
                                                       dtype=torch.float64)]), self.context).cpu()
        count = max(float(totals[2]), 1.0)
        return {"train_loss": float(totals[0]) / count, "train_accuracy": float(totals[1]) / count,
                **meter.summary(float(totals[2]))}

    def train_step(self, raw: Dict[str, Any], boundary: bool = True) -> tuple:
        """One training batch (:func:`~avsc_pipeline.training.graphed_step.train_step`, replayed
        from a CUDA graph where the run has one) and, at `boundary`, the schedule's next rate.

        Args:
            raw: a loader batch (`audio`, `label`, and `video`, `index` where used).
            boundary: the batch closes an accumulation: the optimizer steps.

        Returns:
            The batch's mean loss `()` and correct count `()` on the device, and its size.
        """
        if boundary:
            self._last_lr = self.optimizer.param_groups[0]["lr"]
        step = self.graphed if self.graphed is not None else functools.partial(train_step, self.parts)
        if self.compiler is not None and not self.compiler.done:
            loss, correct, count = self.compiler.first_step(step, raw, boundary)  # timed, cache saved
        else:
            loss, correct, count = step(raw, boundary)
        if boundary:
            self.scheduler.step()
            self.step += 1
        return loss, correct, count

    @torch.no_grad()
    def validate(self) -> Dict[str, Optional[float]]:
        """Accuracy and log loss (clipped as scikit-learn's) on the held-out locations, scored
        as `avsc-eval` scores; None without a validation split.

        Under several processes each scores every `world_size`-th row and the probabilities are
        gathered, so every process holds the figures of one process scoring them all.
        """
        rows = self.inputs.split.validation
        if len(rows) == 0:
            return {"val_accuracy": None, "val_log_loss": None}
        broadcast_buffers(self.model, self.context)  # rank 0's model is the one checkpointed
        rank, world = self.context.rank, self.context.world_size
        mine = rows[rank::world]
        # avsc-eval's batch on CUDA; one loader for the run, whose workers stay between epochs
        if self._val_loader is None and len(mine):
            self._val_loader = scoring_loader(self.inputs.dataset, mine, scoring_config(self.loader_cfg, self.device),
                                              self.device)
        with self.compiler.eager() if self.compiler is not None else contextlib.nullcontext():  # as avsc-eval
            part = (score_rows(self.inputs.dataset, self.scorer, scoring_config(self.loader_cfg, self.device),
                               rows=mine, loader=self._val_loader)
                    if len(mine) else np.zeros((0, len(self.inputs.classes))))
        probs = np.empty((len(rows), len(self.inputs.classes)))
        for other, gathered in enumerate(gather_objects(part, self.context)):
            probs[other::world] = gathered
        labels = self.inputs.dataset.labels[rows]
        self._validation = (probs, labels)
        metrics = score(labels, probs, self.inputs.classes)
        return {"val_accuracy": metrics["accuracy"], "val_log_loss": metrics["log_loss"]}

    # -- epochs, checkpoints, resumption --------------------------------------------------------

    def _end_epoch(self, row: Dict[str, Any]) -> None:
        logger.info("epoch %d/%d: %s", row["epoch"], self.train_cfg.epochs,
                    ", ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k != "epoch"))
        best = self._is_best(row)
        if best:
            self.best = {"epoch": row["epoch"], "val_log_loss": row["val_log_loss"],
                         "val_accuracy": row["val_accuracy"]}
        final = self.epoch >= self.train_cfg.epochs
        # Mean embeddings and the calibration temperature go with the checkpoints a user scores:
        # the best and the final one (fitted on the validation rows, with that epoch's weights).
        means = self._embedding_means() if (best or final) else None
        decision = self._temperature() if (best or final) else None
        temperature, calibration = (decision.temperature, decision.to_dict()) if decision else (1.0, None)
        if best:
            self.save(self.run_dir / BEST_NAME, means, temperature, calibration)
        self.save(self.run_dir / LAST_NAME, means if final else None, temperature if final else 1.0,
                  calibration if final else None)
        if not self.context.is_main:
            return
        write_metrics(self.history, self.run_dir / METRICS_NAME, best_epoch=self.best["epoch"] if self.best else None)
        self.board.epoch(row)
        from avsc_pipeline.evaluation.plots import plot_curves

        plot_curves(self.run_dir / METRICS_NAME, self.run_dir / CURVES_NAME)  # the history has a row

    def _is_best(self, row: Dict[str, Any]) -> bool:
        if row["val_log_loss"] is None:
            return True  # no validation split: the latest epoch is the best we know
        if self.best is None or self.best.get("val_log_loss") is None:
            return True
        if self.train_cfg.select_by == "accuracy":
            return row["val_accuracy"] > self.best["val_accuracy"]
        return row["val_log_loss"] < self.best["val_log_loss"]

    def _temperature(self) -> Optional[TemperatureDecision]:
        """This epoch's calibration: a temperature fitted on the validation rows only where their
        locations confirm it (:func:`decide_temperature`); None without validation."""
        if self._validation is None or len(self._validation[1]) == 0:
            return None
        locations = self.inputs.dataset.identifiers[self.inputs.split.validation]
        logger.info("calibration: checking a temperature on %d validation rows (leave one location out)",
                    len(locations))
        decision = decide_temperature(*self._validation, locations)
        logger.info("calibration: %s", decision.reason)
        return decision

    def _embedding_means(self) -> Optional[Dict[str, torch.Tensor]]:
        if self.model.modality != "joint" or not self.context.is_main:
            return None
        return embedding_means(self.inference, self.inputs, self.caches, self.train_cfg.seed)

    def artifact(self, means: Optional[Dict[str, torch.Tensor]] = None, temperature: float = 1.0,
                 calibration: Optional[Dict[str, Any]] = None) -> ModelArtifact:
        """What scoring this model needs (the shards' feature config among the sections)."""
        return ModelArtifact(
            weights=unwrap(self.model).state_dict(), classes=list(self.inputs.classes),
            config=self.recipe.to_dict(),
            audio_stats=(self.inputs.audio_stats.to_json()
                         if self.model.uses_audio and self.inputs.audio_stats is not None else None),
            embedding_means=means, epoch=self.epoch, temperature=float(temperature), calibration=calibration,
        )

    def resume_state(self, streams: List[Dict[str, Any]]) -> ResumeState:
        """What continuing this run exactly needs, with every process's random streams."""
        return ResumeState(
            epoch=self.epoch, step=self.step, epoch_batches=self.epoch_batches,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            preparer={str(rank): s["preparer"] for rank, s in enumerate(streams)},
            rng={str(rank): s["rng"] for rank, s in enumerate(streams)},
            sampler={"seed": self.inputs.train_sampler.seed, "epoch": self.epoch},
            history=list(self.history), best=self.best,
        )

    def save(self, path: Path, means: Optional[Dict[str, torch.Tensor]] = None, temperature: float = 1.0,
             calibration: Optional[Dict[str, Any]] = None) -> None:
        """Write a checkpoint atomically (a collective: every rank gives its random streams,
        rank 0 writes)."""
        streams = gather_objects({"preparer": self.inputs.preparer.state_dict(),
                                  "rng": rng_state.capture(self.device)}, self.context)
        if self.context.is_main:
            save_checkpoint(path, self.artifact(means, temperature, calibration), self.resume_state(streams))

    def resume(self, artifact: ModelArtifact, state: ResumeState, path: Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (model, optimizer, schedule,
        scaler, this rank's augmentation and RNG streams, epoch and position within it).

        Raises:
            ValueError: a checkpoint made for another class list.
        """
        if list(artifact.classes) != list(self.inputs.classes):
            raise ValueError(f"{path}: made for classes {artifact.classes}, the shards have {self.inputs.classes}")
        unwrap(self.model).load_state_dict(artifact.weights)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        rank = str(self.context.rank)
        if rank in state.preparer:
            self.inputs.preparer.load_state_dict(state.preparer[rank])
            rng_state.restore(state.rng[rank], self.device)
        else:
            logger.warning("%s: no random streams saved for rank %s (the run had fewer processes); "
                           "this rank starts fresh ones", path, rank)
        self.epoch, self.step, self.epoch_batches = state.epoch, state.step, state.epoch_batches
        self.history, self.best = list(state.history), state.best
        logger.info("resumed %s: epoch %d, batch %d, step %d", path, self.epoch + 1, self.epoch_batches, self.step)

    # -- stopping -----------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        self._stop_signal = signum

    def _should_stop(self) -> bool:
        local = self._stop_signal is not None
        if self.context.distributed and self.epoch_batches % 20 != 0:
            return False  # all processes agree every 20 steps: no collective per step
        stop = broadcast_flag(local, self.context)
        if stop and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM
        return stop


class _SkipFirst(torch.utils.data.Sampler):
    """An epoch sampler's order without its first `skip` items (the rest of a resumed epoch)."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def __iter__(self):
        items = list(iter(self.sampler))
        return iter(items[self.skip:])


@contextlib.contextmanager
def _stop_signals(callback):
    """SIGINT and SIGTERM call `callback` (the step finishes, last.pt is written); a second
    SIGINT interrupts at once, a second SIGTERM (a scheduler and torchrun both forwarding one)
    changes nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        callback(signum)
        if signum == signal.SIGINT:
            signal.signal(signum, previous[signum])

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
