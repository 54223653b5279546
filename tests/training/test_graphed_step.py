"""The training step as one function (what a CUDA graph captures), on the CPU: run eagerly it
equals the trainer's step of before (kept here as the reference); the graph's bookkeeping (static
buffers, the learning rate in a device tensor, the mixup's cursor) equals the eager step when a
stand-in recorder replays it; and where capture cannot work one log line says why."""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import pytest
import torch

from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.inference import Inference
from avsc_pipeline.models.classifier import build_model
from avsc_pipeline.sections.loading import BatchAugmentConfig
from avsc_pipeline.sections.model import ModelConfig
from avsc_pipeline.sections.train import TrainConfig
from avsc_pipeline.training.distributed import Context
from avsc_pipeline.training.graphed_step import (
    EagerRecorder, GraphedStep, StepParts, graph_blocker, train_step,
)
from avsc_pipeline.training.losses import soft_target_cross_entropy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import make_features, sections  # noqa: E402 - the trainer tests' toy shards and recipe

AUGMENT = ["batch_augment.spec_augment=true", "batch_augment.mask_per_channel=true", "batch_augment.channel_swap_p=0.5",
           "batch_augment.video_ops=[Identity, Sharpness, Contrast]", "batch_augment.video_num_ops=2",
           "batch_augment.mixup_fraction=0.5", "batch_augment.mixup_alpha=0.4"]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_features(tmp_path_factory.mktemp("features"), rows=120)


# -- the trainer's step of before, the reference ----------------------------------------------------

def step_of_before(trainer, raw, boundary):
    """`Trainer._step` and `_optimizer_step` as they were before the step became one function."""
    batch = trainer.inference.prepare(raw)
    given = {}
    if trainer.caches:
        index = batch["index"].to(trainer.device, non_blocking=True)
        given = {part: table[index] for part, table in trainer.caches.items()}
    logits = trainer.inference.logits(batch, given, module=trainer.step_model)
    loss = soft_target_cross_entropy(logits.float(), batch["target"])
    trainer.scaler.scale(loss / trainer.train_cfg.grad_accum).backward()
    if boundary:
        if trainer.train_cfg.grad_clip is not None:
            trainer.scaler.unscale_(trainer.optimizer)
            torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.train_cfg.grad_clip)
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scheduler.step()
        trainer.step += 1
    correct = (logits.argmax(1) == batch["target"].argmax(1)).sum()
    return loss, correct, int(batch["label"].shape[0])


def a_trainer(features: Path, tmp: Path, *overrides: str):
    from avsc_pipeline.training.run import build_trainer, built_input, read_recipe

    context = Context(torch.device("cpu"))
    recipe, classes = read_recipe(context, features, sections(*overrides), None)
    stack = built_input(context, features, recipe, classes)
    model, inputs = stack.__enter__()
    trainer = build_trainer(context, recipe, model, inputs, tmp, progress=False)
    trainer.model.train()
    inputs.preparer.train()
    return trainer, stack


def batches(trainer, n):
    loader = trainer.inputs.loader(trainer.inputs.train_sampler)
    trainer.inputs.train_sampler.set_epoch(0)
    out = []
    for raw in loader:
        out.append(raw)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("modality,extra", [
    ("joint", ["train.grad_clip=1.0", "model.fusion_dropout=0.3"]),
    ("audio", ["train.optimizer=sgd", "train.lr=0.05", "train.scheduler=cosine", "train.grad_accum=2"]),
])
def test_the_step_function_equals_the_trainers_step_of_before(features, tmp_path, modality, extra):
    overrides = [f"model.modality={modality}", "train.epochs=2", *AUGMENT, *extra]
    new, new_stack = a_trainer(features, tmp_path / "new", *overrides)
    old, old_stack = a_trainer(features, tmp_path / "old", *overrides)
    try:
        raws = batches(new, 6)
        accum = new.train_cfg.grad_accum
        runs = []
        for trainer, step in ((new, new.train_step), (old, lambda raw, b: step_of_before(old, raw, b))):
            torch.manual_seed(7)  # the same dropout masks
            runs.append([step(raw, (i + 1) % accum == 0) for i, raw in enumerate(raws)])
        for i, (got, want) in enumerate(zip(*runs)):
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2], i
        assert new.step == old.step == len(raws) // accum
        assert new.optimizer.param_groups[0]["lr"] == old.optimizer.param_groups[0]["lr"]
        for (name, a), b in zip(new.model.state_dict().items(), old.model.state_dict().values()):
            assert torch.equal(a, b), name
    finally:
        new_stack.__exit__(None, None, None)
        old_stack.__exit__(None, None, None)


def test_the_trainer_says_once_why_its_step_is_eager(features, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="avsc_pipeline.training.graphed_step")
    trainer, stack = a_trainer(features, tmp_path, "model.modality=audio")
    try:
        assert trainer.graphed is None
        lines = [r.getMessage() for r in caplog.records if r.name.endswith("graphed_step")]
        assert lines == ["training step: eager, not a CUDA graph (the device is cpu; CUDA graphs need CUDA)"]
    finally:
        stack.__exit__(None, None, None)


# -- the graph's bookkeeping, replayed by a stand-in recorder ------------------------------------------

TINY = ModelConfig(modality="joint", audio_widths=(8, 8, 8), video="small_cnn", video_weights=None,
                   fusion_hidden=(16,), fusion_dropout=0.2)


def tiny_parts(seed: int = 0, alpha=0.4):
    """A joint model, its augmenting preparer, a fused Adam (it takes a tensor learning rate on
    the CPU too) and a schedule that changes the rate every step."""
    torch.manual_seed(seed)
    model = build_model(TINY, 10)
    augment = BatchAugmentConfig(video_ops=("Identity", "Sharpness", "Contrast"), video_num_ops=2,
                                 mixup_fraction=0.5, mixup_alpha=alpha, mask_per_channel=True, channel_swap_p=0.5)
    preparer = BatchPreparer(10, None, (model.frame_mean, model.frame_std), augment, seed=seed).train()
    inference = Inference(model, preparer, "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return StepParts(inference, model, optimizer, scaler), schedule


def raw_batch(i: int, size: int = 8):
    gen = torch.Generator().manual_seed(100 + i)
    return {"audio": torch.randn(size, 6, 32, 39, generator=gen).half(),
            "video": torch.randint(0, 256, (size, 2, 3, 32, 32), generator=gen, dtype=torch.uint8),
            "label": torch.randint(0, 10, (size,), generator=gen), "index": torch.arange(size)}


@pytest.mark.parametrize("alpha", [0.4, None])
def test_the_replayed_step_equals_the_eager_step(alpha, caplog):
    raws = [raw_batch(i) for i in range(7)] + [raw_batch(7, size=5)]  # a last, smaller batch
    eager, eager_schedule = tiny_parts(alpha=alpha)
    torch.manual_seed(1)
    want = []
    for raw in raws:
        want.append(train_step(eager, raw, True))
        eager_schedule.step()
    graphed_parts, graphed_schedule = tiny_parts(alpha=alpha)
    recorder = EagerRecorder()
    graphed = GraphedStep(graphed_parts, warmup=2, recorder=recorder)
    caplog.set_level(logging.INFO, logger="avsc_pipeline.training.graphed_step")
    torch.manual_seed(1)
    got = []
    for raw in raws:
        got.append(graphed(raw))
        graphed_schedule.step()
    assert recorder.fn is not None and graphed.signature is not None
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2], i
    for (name, a), b in zip(graphed_parts.inference.model.state_dict().items(),
                            eager.inference.model.state_dict().values()):
        assert torch.equal(a, b), name
    # the schedule's rate stays a float for the checkpoint, the graph's tensor has the last one
    assert isinstance(graphed_parts.optimizer.param_groups[0]["lr"], float)
    assert float(graphed.lrs[0]) == pytest.approx(0.003 / 7)
    said = [r.getMessage() for r in caplog.records if "differs from the captured" in r.getMessage()]
    assert len(said) == 1 and "audio [5, 6, 32, 39]" in said[0]


def test_the_state_of_a_graphed_run_resumes_an_eager_one():
    """Optimizer state written while a graph replays has float rates: a CPU run loads it."""
    parts, schedule = tiny_parts()
    graphed = GraphedStep(parts, warmup=1, recorder=EagerRecorder())
    for i in range(3):
        graphed(raw_batch(i))
        schedule.step()
    state = copy.deepcopy(parts.optimizer.state_dict())
    assert all(isinstance(group["lr"], float) for group in state["param_groups"])
    model = copy.deepcopy(parts.inference.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    optimizer.load_state_dict(state)


class _Scaler:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def is_enabled(self) -> bool:
        return self.enabled


def test_graph_blocker_names_each_reason():
    parts, _ = tiny_parts()
    cuda = StepParts(Inference(parts.inference.model, parts.inference.preparer, "cuda"), parts.module,
                     parts.optimizer, _Scaler(False))
    config = TrainConfig()
    assert graph_blocker(parts, config) == "the device is cpu; CUDA graphs need CUDA"
    assert graph_blocker(cuda, TrainConfig(cuda_graph=False)) == "train.cuda_graph is off"
    assert graph_blocker(cuda, config) is None
    assert "train.compile" in graph_blocker(cuda, TrainConfig(compile=True))
    assert "grad_accum=2" in graph_blocker(cuda, TrainConfig(grad_accum=2))
    fp16 = StepParts(cuda.inference, cuda.module, cuda.optimizer, _Scaler(True))
    assert "fp16" in graph_blocker(fp16, config)
    preparer = cuda.inference.preparer
    preparer.video_aug.ops = ("Identity", "Rotate")
    assert "['Rotate']" in graph_blocker(cuda, config)
    with pytest.raises(ValueError, match="expected grad_accum 1"):
        GraphedStep(StepParts(parts.inference, parts.module, parts.optimizer, parts.scaler, grad_accum=2))
