"""Optimizers and learning-rate schedules of the recipe, built from the `train:` section."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from avsc_pipeline.sections.train import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig,
                    device: "torch.device | str | None" = None) -> torch.optim.Optimizer:
    """SGD with momentum (the FCNN recipe), Adam (the joint recipe) or AdamW.

    On CUDA the fused implementation (one kernel per step for all parameters, no host
    synchronization, so a CUDA graph can capture it); elsewhere torch's default (foreach),
    whose float32 rounding earlier runs and the bit-exact CPU resumption were made with.

    Args:
        params: the trainable parameters.
        config: `optimizer`, `lr`, `weight_decay`, `momentum`.
        device: where the parameters live (None: where the first one does).
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("expected at least one trainable parameter, got none (is everything frozen?)")
    device = torch.device(device) if device is not None else params[0].device
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               **fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)


def warm_restart_lr(step: int, steps_per_epoch: int, max_lr: float, min_lr: float,
                    restarts: Sequence[int], period: float = 2.0) -> float:
    """The rate Hu et al.'s `LR_WarmRestart` callback sets for one optimizer step.

    The callback (their `DCASE_training_functions.py`) numbers epochs as `epoch` below
    `restarts[0] - 1` and `epoch + 1` from there on (it skips one number); each restart it
    reaches starts a new cosine from `max_lr` and doubles the period, which is `period` epochs
    before the first. Within an epoch it moves by `batch / steps_per_epoch` every step::

        pts = current_epoch + batch / nbatch - start
        rate = min_lr + 0.5 (max_lr - min_lr)(1 + cos(pts / T * pi))

    With restarts 3, 7, 15, 31, 63, 127 and period 2 the 0-based epochs 0-1, 2-5, 6-13, 14-29,
    30-61, 62-125 and 126-253 are one period each (2, 4, ..., 128 epochs): 254 epochs end just
    before the last period does. Past a period's end (no restart left) the cosine rises again,
    as the callback's does.

    Args:
        step: 0-based optimizer step since the start of the run.
        steps_per_epoch: optimizer steps per epoch (the callback's `nbatch`).
        max_lr: the rate at each (re)start.
        min_lr: the rate at each period's end.
        restarts: the callback's `epochs_restart`, in its numbering, increasing.
        period: the first period in epochs (the callback's `Tmult`).
    """
    epoch, batch = divmod(int(step), int(steps_per_epoch))
    current = epoch if epoch + 1 < restarts[0] else epoch + 1
    start, length = 0, float(period)
    for restart in restarts:  # every restart the callback has met by this epoch
        if restart <= current:
            start, length = restart, 2 * length
    pts = current + batch / steps_per_epoch - start
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(pts / length * math.pi))


def keras_decay(step: int, decay: float) -> float:
    """Keras' (2.x) inverse-time decay of `SGD(decay=...)`: the factor `1 / (1 + decay * step)`
    applied to the rate at optimizer step `step` (0 for the first)."""
    return 1.0 / (1.0 + decay * step)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step schedule (call `step()` after every optimizer step).

    The factor is a function of the global optimizer step alone (the scheduler's `last_epoch`,
    saved in its state dict), so a resumed run continues the same curve, Keras' decay included.

    Args:
        optimizer: the optimizer.
        config: `scheduler`, `epochs`, `lr`, `min_lr`, `restart_epochs`, `restart_period`,
            `lr_decay`.
        steps_per_epoch: optimizer steps per epoch.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"expected steps_per_epoch >= 1, got {steps_per_epoch}")
    lr, decay = config.lr, config.lr_decay
    min_factor = min(1.0, config.min_lr / lr)
    total = config.epochs * steps_per_epoch
    if config.scheduler == "none":
        def schedule(step: int) -> float:
            return 1.0
    elif config.scheduler == "cosine":
        def schedule(step: int) -> float:
            return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    else:
        restarts, period, min_lr = tuple(config.restart_epochs), config.restart_period, min(config.min_lr, lr)

        def schedule(step: int) -> float:
            return warm_restart_lr(step, steps_per_epoch, lr, min_lr, restarts, period) / lr
    if decay == 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step) * keras_decay(step, decay))
