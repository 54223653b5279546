"""The training loop: `fit`, `train_one_epoch`, `validate`, checkpoints and resumption.

A :class:`Trainer` owns the model, optimizer, schedule, batch preparation and loaders of one
run. Every epoch it writes `last.pt` (and `best.pt` on the best validation figure) atomically;
SIGINT and SIGTERM finish the current optimizer step, write `last.pt` and stop, and `--resume`
continues from there: with `train.deterministic` on CPU the resumed run ends with exactly the
weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from avsc_pipeline.config import to_dict
from avsc_pipeline.dataio.loader import ShardLoader, make_loader
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.samplers import EpochSampler
from avsc_pipeline.evaluation.metrics import score
from avsc_pipeline.models.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint
from avsc_pipeline.models.classifier import SceneClassifier
from avsc_pipeline.training import rng_state
from avsc_pipeline.training.distributed import Context, all_sum, broadcast_flag, unwrap
from avsc_pipeline.training.losses import soft_target_cross_entropy
from avsc_pipeline.training.optim import build_optimizer, build_scheduler
from avsc_pipeline.training.run_dir import BEST_NAME, CURVES_NAME, LAST_NAME, METRICS_NAME, write_metrics
from avsc_pipeline.training.setup import RunData, cacheable, compute_embeddings

logger = logging.getLogger(__name__)

EMBEDDING_MEAN_ROWS = 4096


class StepModel(torch.nn.Module):
    """The part of the model a step runs: extractors whose embeddings are not cached, the head.

    Wrapped in DistributedDataParallel when several processes train.
    """

    def __init__(self, model: SceneClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: Optional[torch.Tensor], video: Optional[torch.Tensor],
                e_audio: Optional[torch.Tensor] = None, e_video: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits `(B, num_classes)` from features `(B, 6, F, T)`, frames `(B, 2, 3, H, W)` or
        cached embeddings `(B, D)`."""
        model = self.model
        if model.uses_audio and e_audio is None:
            e_audio = model.embed_audio(audio)
        if model.uses_video and e_video is None:
            e_video = model.embed_video(video)
        return model.classify(e_audio, e_video)


class Trainer:
    """One run of one stage.

    Args:
        sections: the resolved config sections (`model`, `train`, `batch_augment`, `loader`, ...).
        data: the run's shards and split.
        model: the stage's model (initialized and frozen as configured).
        run_dir: where checkpoints, metrics and curves go (rank 0 writes).
        context: device, rank and world size.
        progress: show progress bars.
    """

    def __init__(self, sections: Dict[str, Any], data: RunData, model: SceneClassifier, run_dir: Path,
                 context: Context, progress: bool = True) -> None:
        self.sections, self.data, self.run_dir, self.context = sections, data, Path(run_dir), context
        self.train_cfg, self.loader_cfg = sections["train"], sections["loader"]
        self.progress = progress and context.is_main
        self.device = context.device
        self.model = model.to(self.device)
        cuda = self.device.type == "cuda"
        if cuda and self.train_cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.preparer = BatchPreparer(len(data.classes), data.audio_stats, (model.frame_mean, model.frame_std),
                                      sections["batch_augment"], self.train_cfg.seed).to(self.device)
        self.caches = self._build_caches()
        self.step_model = self._wrap(StepModel(self.model))
        self.optimizer = build_optimizer(self.model.parameters(), self.train_cfg)
        self.train_sampler = EpochSampler(data.split.train, data.split.augmented, self.loader_cfg.aug_fraction,
                                          shuffle=True, seed=self.train_cfg.seed)
        self.steps_per_epoch = max(1, math.ceil(self._batches_per_epoch() / self.train_cfg.grad_accum))
        self.scheduler = build_scheduler(self.optimizer, self.train_cfg, self.steps_per_epoch)
        self.amp_dtype = _amp_dtype(self.train_cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch, self.step, self.epoch_batches = 0, 0, 0
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None
        self._stop_signal: Optional[int] = None

    # -- set-up -------------------------------------------------------------------------------

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.train_cfg.compile:
            module = torch.compile(module)
        if self.context.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def _build_caches(self) -> Dict[str, torch.Tensor]:
        caches = {}
        rows = np.concatenate([self.data.split.train, self.data.split.augmented, self.data.split.validation])
        for part, ok in cacheable(self.model.frozen_audio, self.model.frozen_video, self.train_cfg,
                                  self.sections["batch_augment"]).items():
            if ok:
                started = time.perf_counter()
                caches[part] = compute_embeddings(self.model, part, self.data, rows, self.loader_cfg, self.device,
                                                  self.progress)
                logger.info("frozen %s extractor: embeddings of %d rows cached in %.1f s", part, len(rows),
                            time.perf_counter() - started)
        return caches

    def _batches_per_epoch(self) -> int:
        size, batch = len(self.train_sampler), self.loader_cfg.batch_size
        return size // batch if self.loader_cfg.drop_last and size >= batch else math.ceil(size / batch)

    def _loader(self, sampler: torch.utils.data.Sampler, drop_last: Optional[bool] = None) -> ShardLoader:
        return make_loader(self.data.dataset, sampler, self.loader_cfg, self.device, self.train_cfg.seed, drop_last)

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> Dict[str, Any]:
        """Train from the current epoch to `train.epochs`; returns the last epoch's metrics row.

        Stops early (after writing `last.pt`) on SIGINT or SIGTERM; then `stopped_by` in the
        returned row names the signal.
        """
        loader = self._loader(self.train_sampler)
        row: Dict[str, Any] = self.history[-1] if self.history else {}
        with _stop_signals(self._on_signal):
            while self.epoch < self.train_cfg.epochs:
                self.train_sampler.set_epoch(self.epoch)
                epoch_loader = loader if self.epoch_batches == 0 else self._resumed_loader()
                train_metrics = self.train_one_epoch(epoch_loader)
                if self._stop_signal is not None:
                    self.save(self.run_dir / LAST_NAME)
                    logger.warning("stopped by signal %d in epoch %d after %d batches; last.pt written, "
                                   "--resume continues", self._stop_signal, self.epoch + 1, self.epoch_batches)
                    return {**row, "stopped_by": self._stop_signal}
                row = {"epoch": self.epoch + 1, **train_metrics, **self.validate(),
                       "lr": self.optimizer.param_groups[0]["lr"]}
                self.epoch, self.epoch_batches = self.epoch + 1, 0
                self.history.append(row)
                self._end_epoch(row)
        self._finish()
        return row

    def _resumed_loader(self) -> ShardLoader:
        skip = self.epoch_batches * self.loader_cfg.batch_size
        return self._loader(_SkipFirst(self.train_sampler, skip))

    def train_one_epoch(self, loader: ShardLoader) -> Dict[str, float]:
        """One pass over the epoch's batches (from `self.epoch_batches` on when resuming).

        Returns:
            `train_loss`, `train_accuracy` (against the dominant target class), `samples_per_s`
            and `data_wait_fraction` (share of the step time spent waiting for a batch).
        """
        from tqdm import tqdm

        self.model.train()
        self.preparer.train()
        accum = self.train_cfg.grad_accum
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss sum, correct, count
        seen = 0
        waited = 0.0
        started = time.perf_counter()
        total = self._batches_per_epoch()
        bar = tqdm(total=total, initial=self.epoch_batches, desc=f"epoch {self.epoch + 1}/{self.train_cfg.epochs}",
                   unit="batch", disable=not self.progress, leave=False)
        iterator = iter(loader)
        while True:
            fetch = time.perf_counter()
            raw = next(iterator, None)
            waited += time.perf_counter() - fetch
            if raw is None:
                break
            done = self.epoch_batches + 1
            # The epoch's last batch closes a partial accumulation (its gradients synchronized).
            loss, correct, count = self._step(raw, boundary=done % accum == 0 or done >= total)
            sums[0] += loss.detach().double() * count
            sums[1] += correct
            seen += count
            self.epoch_batches += 1
            bar.update(1)
            if self.progress and self.epoch_batches % 10 == 0:
                bar.set_postfix(samples_s=f"{seen / (time.perf_counter() - started):.1f}")
            if self.epoch_batches % accum == 0 and self._should_stop():
                break
        bar.close()
        loader.release_unreferenced()
        elapsed = max(time.perf_counter() - started, 1e-9)
        sums[2] = seen
        sums = all_sum(sums, self.context).cpu()
        count = max(float(sums[2]), 1.0)
        return {"train_loss": float(sums[0]) / count, "train_accuracy": float(sums[1]) / count,
                "samples_per_s": float(sums[2]) / elapsed, "data_wait_fraction": waited / elapsed,
                "seconds": elapsed}

    def _step(self, raw: Dict[str, Any], boundary: bool) -> tuple:
        batch = self.preparer(raw)
        index = batch["index"].to(self.device)
        e_audio = self.caches["audio"][index] if "audio" in self.caches else None
        e_video = self.caches["video"][index] if "video" in self.caches else None
        audio = batch["audio"]
        if self.device.type == "cuda" and self.train_cfg.channels_last:
            audio = audio.contiguous(memory_format=torch.channels_last)
        sync = contextlib.nullcontext()
        if not boundary and isinstance(self.step_model, torch.nn.parallel.DistributedDataParallel):
            sync = self.step_model.no_sync()
        with sync:
            with _autocast(self.device, self.amp_dtype):
                logits = self.step_model(audio, batch.get("video"), e_audio, e_video)
            loss = soft_target_cross_entropy(logits.float(), batch["target"])
            self.scaler.scale(loss / self.train_cfg.grad_accum).backward()
        if boundary:
            self._optimizer_step()
        correct = (logits.argmax(1) == batch["target"].argmax(1)).sum()
        return loss, correct, len(index)

    def _optimizer_step(self) -> None:
        if self.train_cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    @torch.no_grad()
    def validate(self) -> Dict[str, Optional[float]]:
        """Loss, accuracy and log loss (clipped as scikit-learn's) on the held-out locations.

        Computed on rank 0 over every validation row (the others skip it); None without a
        validation split.
        """
        empty = {"val_loss": None, "val_accuracy": None, "val_log_loss": None}
        if len(self.data.split.validation) == 0 or not self.context.is_main:
            return empty
        probs, labels = self.predict_rows(self.data.split.validation)
        known = labels >= 0
        metrics = score(labels[known], probs[known], self.data.classes)
        picked = np.clip(probs[known, labels[known]], 1e-300, None)
        return {"val_loss": float(-np.log(picked).mean()), "val_accuracy": metrics["accuracy"],
                "val_log_loss": metrics["log_loss"]}

    @torch.no_grad()
    def predict_rows(self, rows: np.ndarray) -> tuple:
        """Class probabilities `(N, C)` float64 and labels `(N,)` of dataset rows, in eval mode."""
        sampler = EpochSampler(rows, shuffle=False, num_replicas=1, rank=0)
        model, preparer = unwrap(self.step_model), self.preparer
        model.eval()
        preparer.eval()
        probs, labels = [], []
        for raw in self._loader(sampler, drop_last=False):
            batch = preparer(raw)
            index = batch["index"].to(self.device)
            e_audio = self.caches["audio"][index] if "audio" in self.caches else None
            e_video = self.caches["video"][index] if "video" in self.caches else None
            with _autocast(self.device, self.amp_dtype):
                logits = model(batch["audio"], batch.get("video"), e_audio, e_video)
            probs.append(torch.softmax(logits.double(), dim=1).cpu())
            labels.append(batch["label"].cpu())
        model.train()
        return torch.cat(probs).numpy(), torch.cat(labels).numpy()

    # -- epochs, checkpoints, resumption --------------------------------------------------------

    def _end_epoch(self, row: Dict[str, Any]) -> None:
        logger.info("epoch %d/%d: %s", row["epoch"], self.train_cfg.epochs,
                    ", ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k != "epoch"))
        if not self.context.is_main:
            return
        if self._is_best(row):
            self.best = {"epoch": row["epoch"], "val_log_loss": row["val_log_loss"], "val_accuracy": row["val_accuracy"]}
            self.save(self.run_dir / BEST_NAME)
        self.save(self.run_dir / LAST_NAME)
        write_metrics(self.history, self.run_dir / METRICS_NAME)
        try:
            from avsc_pipeline.evaluation.plots import plot_curves

            plot_curves(self.run_dir / METRICS_NAME, self.run_dir / CURVES_NAME)
        except (ImportError, ValueError) as err:
            logger.warning("curves.png not drawn: %s", err)

    def _is_best(self, row: Dict[str, Any]) -> bool:
        if row["val_log_loss"] is None:
            return True  # no validation split: the latest epoch is the best we know
        if self.best is None or self.best.get("val_log_loss") is None:
            return True
        if self.train_cfg.select_by == "accuracy":
            return row["val_accuracy"] > self.best["val_accuracy"]
        return row["val_log_loss"] < self.best["val_log_loss"]

    def _finish(self) -> None:
        """Store the training-set mean embeddings (for `avsc-eval --modality`) in the checkpoints."""
        if not self.context.is_main or self.model.stage != "joint":
            return
        for name in (BEST_NAME, LAST_NAME):
            path = self.run_dir / name
            if not path.is_file():
                continue
            ckpt = load_checkpoint(path, map_location=self.device)
            current = {k: v.clone() for k, v in unwrap(self.model).state_dict().items()}
            unwrap(self.model).load_state_dict(ckpt["model"])
            ckpt["embedding_means"] = self.embedding_means()
            save_checkpoint(ckpt, path)
            unwrap(self.model).load_state_dict(current)

    @torch.no_grad()
    def embedding_means(self) -> Dict[str, torch.Tensor]:
        """Mean E_A and E_V over (up to 4,096 of) the original training rows, on the CPU."""
        rows = self.data.split.train
        if len(rows) > EMBEDDING_MEAN_ROWS:
            rng = np.random.default_rng(self.train_cfg.seed)
            rows = np.sort(rng.choice(rows, EMBEDDING_MEAN_ROWS, replace=False))
        means = {}
        for part in ("audio", "video"):
            if part in self.caches:
                means[part] = self.caches[part][torch.as_tensor(rows, device=self.device)].mean(0).cpu()
            else:
                table = compute_embeddings(self.model, part, self.data, rows, self.loader_cfg, self.device)
                means[part] = table[torch.as_tensor(rows, device=self.device)].mean(0).cpu()
        return means

    def checkpoint(self) -> Dict[str, Any]:
        """Everything needed to evaluate this model and to resume this run exactly."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model": unwrap(self.model).state_dict(),
            "config": {name: to_dict(value) for name, value in self.sections.items()},
            "stage": self.model.stage, "classes": list(self.data.classes),
            "feature_config": to_dict(self.data.dataset.feature_config),
            "audio_stats": self.data.audio_stats.to_json(),
            "embedding_means": None,
            "epoch": self.epoch, "step": self.step, "epoch_batches": self.epoch_batches,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "preparer": self.preparer.state_dict(),
            "rng": rng_state.capture(), "sampler": {"seed": self.train_sampler.seed, "epoch": self.epoch},
            "history": list(self.history), "best": self.best,
        }

    def save(self, path: Path) -> None:
        """Write a checkpoint atomically (rank 0 only)."""
        if self.context.is_main:
            save_checkpoint(self.checkpoint(), path)

    def resume(self, ckpt: Dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint written by :meth:`save` (model, optimizer, schedule,
        scaler, augmentation generators, every RNG, epoch and position within it).

        Args:
            ckpt: the checkpoint, as :func:`~avsc_pipeline.models.checkpoint.load_checkpoint` reads it.
            path: where it was read from (named in messages).
        """
        if list(ckpt["classes"]) != list(self.data.classes):
            raise ValueError(f"{path}: made for classes {ckpt['classes']}, the shards have {self.data.classes}")
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.preparer.load_state_dict(ckpt["preparer"])
        rng_state.restore(ckpt["rng"])
        self.epoch, self.step, self.epoch_batches = ckpt["epoch"], ckpt["step"], ckpt["epoch_batches"]
        self.history, self.best = list(ckpt["history"]), ckpt["best"]
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

    def __init__(self, sampler: EpochSampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def __iter__(self):
        items = list(iter(self.sampler))
        return iter(items[self.skip:])


@contextlib.contextmanager
def _stop_signals(callback):
    """SIGINT and SIGTERM call `callback` once (the step finishes, last.pt is written); a second
    SIGINT interrupts at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        callback(signum)
        signal.signal(signum, previous[signum])

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
