"""Optimizers and learning-rate schedules of the recipe, built from the `train:` section."""

from __future__ import annotations

import math
from typing import Iterable, List

import torch

from avsc_pipeline.training.config import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the FCNN recipe), Adam (the joint recipe) or AdamW.

    Args:
        params: the trainable parameters.
        config: `optimizer`, `lr`, `weight_decay`, `momentum`.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("expected at least one trainable parameter, got none (is everything frozen?)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def warm_restart_factor(epoch: float, restarts: List[int], min_factor: float) -> float:
    """The learning rate as a fraction of the initial one at fractional `epoch`.

    Cosine annealing from 1 to `min_factor` within each period; periods end at `restarts`
    (e.g. 3, 7, 15, 31: periods of 3, 4, 8, 16 epochs) and repeat the last period's length
    after the last restart, as in SGDR (Loshchilov and Hutter) and Hu et al.'s FCNN recipe.
    """
    start, end = 0.0, float(restarts[0])
    for boundary in restarts[1:]:
        if epoch < end:
            break
        start, end = end, float(boundary)
    while epoch >= end:  # past the last listed restart: keep the last period's length
        start, end = end, end + (end - start)
    progress = (epoch - start) / (end - start)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step schedule (call `step()` after every optimizer step).

    Args:
        optimizer: the optimizer.
        config: `scheduler`, `epochs`, `lr`, `min_lr`, `restart_epochs`.
        steps_per_epoch: optimizer steps per epoch.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"expected steps_per_epoch >= 1, got {steps_per_epoch}")
    min_factor = min(1.0, config.min_lr / config.lr)
    total = config.epochs * steps_per_epoch
    if config.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    restarts = list(config.restart_epochs)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warm_restart_factor(step / steps_per_epoch, restarts, min_factor))
