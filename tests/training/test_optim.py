"""The audio step's learning rate against a transcription of the authors' Keras training.

The reference below is written from Hu et al.'s `LR_WarmRestart` callback
(`DCASE_training_functions.py` of MihawkHu/DCASE2020_task1) and Keras 2's `SGD(decay=...)`,
kept stateful as they are: `on_epoch_begin` / `on_batch_begin` per epoch and batch, and the
optimizer's `iterations` counter, so it shares no code with `training.optim`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avsc_pipeline.sections import load_recipe
from avsc_pipeline.sections.train import TrainConfig
from avsc_pipeline.training.optim import build_optimizer, build_scheduler

CONFIGS = Path(__file__).resolve().parents[2] / "avsc_pipeline" / "configs"


class KerasReference:
    """The callback and Keras' decay, as the authors' run applies them."""

    def __init__(self, nbatch, initial_lr, min_lr, epochs_restart, tmult, decay):
        self.initial_lr, self.min_lr = initial_lr, min_lr
        self.epochs_restart, self.nbatch = [float(e) for e in epochs_restart], nbatch
        self.current_ep, self.start_ep, self.tmult = 0, 0, tmult
        self.decay, self.iterations, self.lr = decay, 0, initial_lr

    def on_epoch_begin(self, epoch):
        if epoch + 1 < self.epochs_restart[0]:
            self.current_ep = epoch
        else:
            self.current_ep = epoch + 1
        if np.isin(self.current_ep, self.epochs_restart):
            self.start_ep = self.current_ep
            self.tmult = 2 * self.tmult

    def on_batch_begin(self, batch):
        pts = self.current_ep + batch / self.nbatch - self.start_ep
        decay = 1 + np.cos(pts / self.tmult * np.pi)
        self.lr = self.min_lr + 0.5 * (self.initial_lr - self.min_lr) * decay

    def step_rate(self):
        """The rate this optimizer step applies (Keras 2 SGD.get_updates), then count the step."""
        rate = self.lr * (1.0 / (1.0 + self.decay * self.iterations))
        self.iterations += 1
        return rate


def reference_rates(epochs, nbatch, lr, min_lr, restarts, tmult, decay):
    keras = KerasReference(nbatch, lr, min_lr, restarts, tmult, decay)
    rates = []
    for epoch in range(epochs):
        keras.on_epoch_begin(epoch)
        for batch in range(nbatch):
            keras.on_batch_begin(batch)
            rates.append(keras.step_rate())
    return np.asarray(rates)


def scheduled_rates(config, steps_per_epoch, steps, state=None, start=0):
    """The rate each optimizer step uses, read from a real SGD optimizer under the scheduler."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    if state is not None:
        optimizer.load_state_dict(state[0])
        scheduler.load_state_dict(state[1])
    rates = []
    for _ in range(start, steps):
        rates.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.zeros(1)
        optimizer.step()
        scheduler.step()
    return np.asarray(rates), (optimizer.state_dict(), scheduler.state_dict())


def audio_step() -> TrainConfig:
    return load_recipe([CONFIGS / "paper.yaml", CONFIGS / "steps" / "audio.yaml"]).train


def test_the_audio_step_is_the_authors_callback_with_keras_decay_at_every_step():
    config, nbatch = audio_step(), 3
    assert (config.lr, config.min_lr, config.lr_decay, config.epochs) == (0.1, 1e-5, 1e-6, 254)
    expected = reference_rates(254, nbatch, 0.1, 0.1 * 1e-4, [3.0, 7.0, 15.0, 31.0, 63.0, 127.0], 2, 1e-6)
    got, _ = scheduled_rates(config, nbatch, 254 * nbatch)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    # Restarts (full rate, before the decay) open the 0-based epochs 0, 2, 6, 14, 30, 62 and 126.
    decay = 1.0 / (1.0 + 1e-6 * np.arange(len(got)))
    restarted = np.flatnonzero(np.isclose(got / decay, 0.1, rtol=1e-12))
    assert (restarted // nbatch).tolist() == [0, 2, 6, 14, 30, 62, 126]
    # The last period (128 epochs) is not cut: the run ends just before it would restart.
    assert 1e-5 < got[-1] / decay[-1] < 2e-5 and got[-1] < got[-2]


def test_without_decay_the_rates_are_the_callbacks_own():
    config = TrainConfig(optimizer="sgd", lr=0.1, min_lr=1e-5, scheduler="warm_restarts", epochs=20)
    assert config.lr_decay == 0 and config.restart_period == 2
    expected = reference_rates(20, 5, 0.1, 1e-5, [3, 7, 15, 31, 63, 127], 2, 0.0)
    got, _ = scheduled_rates(config, 5, 20 * 5)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_a_resumed_schedule_continues_the_decay_from_the_saved_step():
    config, nbatch = audio_step(), 4
    whole, _ = scheduled_rates(config, nbatch, 40 * nbatch)
    first, state = scheduled_rates(config, nbatch, 17 * nbatch + 2)
    rest, _ = scheduled_rates(config, nbatch, 40 * nbatch, state=state, start=17 * nbatch + 2)
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)


def test_decay_applies_on_top_of_any_schedule():
    config = TrainConfig(optimizer="sgd", lr=0.5, scheduler="none", lr_decay=1e-2)
    got, _ = scheduled_rates(config, 10, 50)
    np.testing.assert_allclose(got, [0.5 / (1 + 1e-2 * k) for k in range(50)], rtol=1e-14)


@pytest.mark.parametrize("field, value", [("lr_decay", -1e-6), ("restart_period", 0.0),
                                          ("validation", "../evaluate"), ("validation", "")])
def test_bad_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"expected {field}"):
        TrainConfig(**{field: value})


def test_cosine_is_unchanged():
    config = TrainConfig(optimizer="sgd", lr=0.1, min_lr=1e-3, scheduler="cosine", epochs=2)
    got, _ = scheduled_rates(config, 5, 10)
    factor = 1e-2 + (1 - 1e-2) * 0.5 * (1 + np.cos(np.pi * np.arange(10) / 10))
    np.testing.assert_allclose(got, 0.1 * factor, rtol=1e-12)
    assert math.isclose(got[0], 0.1)


@pytest.mark.slow
def test_the_audio_steps_metrics_csv_shows_the_callbacks_rates(tmp_path):
    """`lr` and `lr_last` of each epoch (its first and last optimizer step) of a 4-epoch run of
    `configs/steps/audio.yaml` at toy size, and the run's config, against the reference."""
    import csv

    from avsc_pipeline.sections import load_recipe
    from avsc_pipeline.sections.features import FeatureConfig
    from avsc_pipeline.storage.index import build_index
    from avsc_pipeline.testing import write_random_shard
    from avsc_pipeline.training.run import train_run

    features, run = tmp_path / "features", tmp_path / "audio"
    write_random_shard(features / "train" / "shard-00000.h5", 120, FeatureConfig(n_mels=32, image_size=32),
                       with_video=False)
    build_index(features / "train")
    recipe = load_recipe([CONFIGS / "paper.yaml", CONFIGS / "steps" / "audio.yaml"],
                         ["model.audio_widths=[8, 8, 8]", "loader.batch_size=8", "loader.num_workers=0",
                          "loader.val_fraction=0", "train.epochs=4"])
    train_run(features, run, recipe, device="cpu", progress=False)
    nbatch = 120 // 8
    expected = reference_rates(4, nbatch, 0.1, 1e-5, [3, 7, 15, 31, 63, 127], 2, 1e-6)
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    got = [(float(r["lr"]), float(r["lr_last"])) for r in rows]
    want = [(expected[e * nbatch], expected[(e + 1) * nbatch - 1]) for e in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    config = load_recipe(run / "config.yaml").train
    assert (config.lr_decay, config.restart_epochs, config.validation) == (1e-6, (3, 7, 15, 31, 63, 127), "locations")
