"""Live training curves in TensorBoard: `RUN_DIR/tensorboard`, with `train.tensorboard: true`.

The same figures as `metrics.csv`, per epoch (tags `epoch/<column>`, step = the epoch number:
`train_loss`, `train_accuracy`, `val_accuracy`, `val_log_loss`, `lr`, `lr_last`,
`samples_per_s`, `data_wait_fraction`, `seconds`) and every `train.tensorboard_every` optimizer
steps (tags `step/<name>`, step = the optimizer step: `loss` and `accuracy` of the batch, `lr`,
`samples_per_s` and `data_wait_fraction` of the epoch so far). Watch them with
`tensorboard --logdir runs/`.

Only rank 0 writes. `torch.utils.tensorboard` (the `tensorboard` package, `pip install -e
'.[tensorboard]'`) is imported when the first figure is written, so a run without it costs
nothing; the writer is closed when training ends (:class:`Board` is a context manager).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

logger = logging.getLogger(__name__)

#: The folder of the event files inside the run folder.
TENSORBOARD_DIR = "tensorboard"
#: The `metrics.csv` columns written per epoch (the numeric ones; `best` is the checkpoint's mark).
EPOCH_SCALARS = ("train_loss", "train_accuracy", "val_accuracy", "val_log_loss", "lr", "lr_last", "samples_per_s",
                 "data_wait_fraction", "seconds")


class Board:
    """The run's TensorBoard writer, or nothing when switched off or on another rank.

    Args:
        run_dir: the run folder; events go to `run_dir/tensorboard`.
        enabled: `train.tensorboard`.
        every: write the step figures every this many optimizer steps (`train.tensorboard_every`).
        is_main: whether this process is rank 0 (the only writer).
        world_size: processes training together (the step throughput is this process's times it).

    Raises:
        ValueError: `every` below 1.
    """

    def __init__(self, run_dir: Path, enabled: bool, every: int, is_main: bool = True, world_size: int = 1) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"expected tensorboard_every >= 1, got {every!r}")
        self.folder = Path(run_dir) / TENSORBOARD_DIR
        self.active = bool(enabled) and is_main
        self.every, self.world_size = every, world_size
        self._writer: Any = None
        self._last_step: Optional[int] = None

    def _open(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("train.tensorboard: true needs the tensorboard package (pip install -e "
                                  f"'.[tensorboard]' or pip install tensorboard): {err}") from None
            self._writer = SummaryWriter(log_dir=str(self.folder))
            logger.info("tensorboard: writing to %s (tensorboard --logdir %s)", self.folder, self.folder.parent.parent)
        return self._writer

    def batch(self, step: int, loss: torch.Tensor, correct: torch.Tensor, count: int, lr: float,
              samples_per_s: float, data_wait_fraction: float) -> None:
        """After a training batch: the step figures, when `step` is a multiple of `every` not yet
        written (with gradient accumulation several batches share a step).

        Args:
            step: optimizer steps taken so far.
            loss: the batch's mean loss, a 0-dim tensor (read only when written: one sync).
            correct: the batch's correctly classified samples, a 0-dim tensor.
            count: the batch's samples.
            lr: the learning rate of the step.
            samples_per_s: this process's throughput in the epoch so far.
            data_wait_fraction: this process's share of the epoch so far spent waiting for data.
        """
        if not self.active or step % self.every != 0 or step == self._last_step:
            return
        self._last_step = step
        writer = self._open()
        writer.add_scalar("step/loss", float(loss.detach()), step)
        writer.add_scalar("step/accuracy", float(correct) / max(count, 1), step)
        writer.add_scalar("step/lr", float(lr), step)
        writer.add_scalar("step/samples_per_s", float(samples_per_s) * self.world_size, step)
        writer.add_scalar("step/data_wait_fraction", float(data_wait_fraction), step)

    def epoch(self, row: Mapping[str, Any]) -> None:
        """After an epoch: its `metrics.csv` row's figures (None, e.g. without validation, left out)."""
        if not self.active:
            return
        writer = self._open()
        for name in EPOCH_SCALARS:
            value = row.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(f"epoch/{name}", float(value), int(row["epoch"]))
        writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later figure opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
