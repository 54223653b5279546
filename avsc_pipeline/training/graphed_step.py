"""The training step as one function, and a CUDA graph that replays it.

:func:`train_step` is the step's math: the batch preparer (augmentation and normalization), the
forward, the loss, the backward and, at an accumulation boundary, the optimizer step (the
schedule is the trainer's, on the host). The trainer runs it eagerly, or through
:class:`GraphedStep`, which captures that same function once in a CUDA graph and replays it:

- the first `warmup` steps run eagerly on a side stream (cuDNN picks its algorithms, the
  optimizer creates its state, the augmentations their generators and constants);
- the next batch is captured: its tensors are copied into static device buffers, the
  augmentations' generators are registered on the graph (each replay draws new numbers), the
  optimizer (fused, `capturable`) reads its learning rate from a device tensor, and the Beta
  ratios of the mixup from a device cursor;
- each later step copies its batch into the buffers, writes the scheduled learning rate into the
  device tensor and moves the cursor (a few small copies, no host synchronization) and replays:
  one launch instead of hundreds. Loss and correct count stay on the device.

Where capture cannot work the step stays eager and one log line says why
(:func:`graph_blocker`): not on CUDA, `train.cuda_graph` off, several processes (DDP),
`train.compile`, gradient accumulation, fp16 loss scaling (its inf check is a host decision),
video operations that select images on the host. A batch whose shapes differ from the captured
one (a last, smaller batch) runs eagerly, said once.

The recorder is what captures: :class:`CudaGraphRecorder` on CUDA; the tests use an eager stand-in
that calls the captured function at every replay, so the buffers, the learning-rate tensor and
the cursor are exercised on the CPU too.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Tuple

import torch

from avsc_pipeline.dataio.rng import SeededModule
from avsc_pipeline.inference import Inference
from avsc_pipeline.sections.train import TrainConfig
from avsc_pipeline.training.losses import soft_target_cross_entropy

logger = logging.getLogger(__name__)

#: Eager steps before the capture.
WARMUP_STEPS = 3
#: The raw batch's tensors a step reads (others pass through the preparer unused).
STEP_KEYS = ("audio", "video", "label", "index")
#: Video operations whose batched kernels select images by mask on a GPU (no host sync).
GRAPHABLE_VIDEO_OPS = ("Identity", "Sharpness", "Contrast")

StepOutput = Tuple[torch.Tensor, torch.Tensor, int]


@dataclass
class StepParts:
    """What one training step touches.

    Attributes:
        inference: the forward path (preparer, model, memory format, precision).
        module: what the forward calls (the model, or its DDP or compiled wrapper).
        optimizer: the optimizer (fused on CUDA).
        scaler: the gradient scaler (enabled for fp16 only).
        caches: embedding tables `(N, D)` of frozen extractors, read at the batch's `index`.
        grad_accum: batches per optimizer step.
        grad_clip: the gradient-norm clip, or None.
    """

    inference: Inference
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    caches: Dict[str, torch.Tensor] = field(default_factory=dict)
    grad_accum: int = 1
    grad_clip: Optional[float] = None

    @property
    def device(self) -> torch.device:
        """Where the step runs."""
        return self.inference.device


def train_step(parts: StepParts, raw: Mapping[str, Any], boundary: bool) -> StepOutput:
    """One training batch: prepare, forward, loss, backward and, at `boundary`, the optimizer
    step (clip, step, zero the gradients). The learning-rate schedule is the caller's.

    Args:
        parts: the step's model, optimizer and settings.
        raw: a loader batch: `audio (B, 6, F, T)` float16/float32, `label (B,)` int64, and
            `video (B, K, 3, H, W)` uint8 and `index (B,)` int64 where used.
        boundary: the last batch of an accumulation (its gradients synchronized, then stepped).

    Returns:
        The batch's mean loss `()` float32 and correct count `()` int64, both on the device
        (no host synchronization), and its size B.
    """
    batch = parts.inference.prepare(raw)
    given = {}
    if parts.caches:  # the row index goes to the device only when a table is read with it
        index = batch["index"].to(parts.device, non_blocking=True)
        given = {part: table[index] for part, table in parts.caches.items()}
    sync = contextlib.nullcontext()
    if not boundary and isinstance(parts.module, torch.nn.parallel.DistributedDataParallel):
        sync = parts.module.no_sync()
    with sync:
        logits = parts.inference.logits(batch, given, module=parts.module)
        loss = soft_target_cross_entropy(logits.float(), batch["target"])
        parts.scaler.scale(loss / parts.grad_accum).backward()
    if boundary:
        optimizer_step(parts)
    correct = (logits.argmax(1) == batch["target"].argmax(1)).sum()
    return loss, correct, int(batch["label"].shape[0])


def optimizer_step(parts: StepParts) -> None:
    """Clip (when configured), step through the scaler, zero the gradients (set to None)."""
    if parts.grad_clip is not None:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.inference.model.parameters(), parts.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)


# -- when a graph cannot work ------------------------------------------------------------------------


def graph_blocker(parts: StepParts, config: TrainConfig) -> Optional[str]:
    """Why this run's step cannot be captured in a CUDA graph, or None when it can."""
    if not config.cuda_graph:
        return "train.cuda_graph is off"
    if parts.device.type != "cuda":
        return f"the device is {parts.device.type}; CUDA graphs need CUDA"
    if isinstance(parts.module, torch.nn.parallel.DistributedDataParallel):
        return "several processes (DDP): its gradient buckets synchronize outside a graph"
    if config.compile:
        return "train.compile: the compiler makes its own graphs"
    if config.grad_accum > 1:
        return f"gradient accumulation (train.grad_accum={config.grad_accum}): the graph holds one whole step"
    if parts.scaler.is_enabled():
        return "fp16 loss scaling decides on the host whether each step is skipped"
    video = getattr(parts.inference.preparer, "video_aug", None)
    if video is not None and video.num_ops > 0:
        from avsc_pipeline.dataio.video_augment import choose_kernels

        slow = sorted(set(video.ops) - set(GRAPHABLE_VIDEO_OPS))
        if slow:
            return f"video operations {slow} select their images on the host (only {GRAPHABLE_VIDEO_OPS} do not)"
        if choose_kernels(video.kernels, parts.device) != "batched" or video.masked is False:
            return "per-image video kernels loop on the host"
    return None


# -- recorders -----------------------------------------------------------------------------------------


class Recorder(Protocol):
    """What captures and replays the step."""

    def warm(self, fn: Callable[[], StepOutput]) -> StepOutput:
        """Run `fn` eagerly (a warm-up step)."""

    def capture(self, fn: Callable[[], Tuple[torch.Tensor, torch.Tensor]], generators: List[torch.Generator]) -> None:
        """Record `fn`, whose random draws come from `generators` (and the default generator)."""

    def replay(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run what was recorded; returns its (loss, correct) outputs."""


class CudaGraphRecorder:
    """A CUDA graph, warmed up and captured on a side stream.

    Args:
        device: the CUDA device.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def warm(self, fn: Callable[[], StepOutput]) -> StepOutput:
        """Run `fn` on the side stream, ordered after and before the current stream's work."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = fn()
        current.wait_stream(self.stream)
        return out

    def capture(self, fn: Callable[[], Tuple[torch.Tensor, torch.Tensor]], generators: List[torch.Generator]) -> None:
        """Capture `fn` (nothing runs); its outputs become the graph's static outputs."""
        graph = torch.cuda.CUDAGraph()
        for generator in generators:
            graph.register_generator_state(generator)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.graph(graph, stream=self.stream):
            self.outputs = fn()
        self.graph = graph

    def replay(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Replay on the current stream; the outputs are overwritten by the next replay."""
        self.graph.replay()
        return self.outputs


class EagerRecorder:
    """Stands in for a CUDA graph where there is none: `capture` keeps the function, `replay`
    calls it. The graph's bookkeeping (buffers, learning-rate tensor, cursor) runs unchanged."""

    def __init__(self) -> None:
        self.fn: Optional[Callable[[], Tuple[torch.Tensor, torch.Tensor]]] = None

    def warm(self, fn: Callable[[], StepOutput]) -> StepOutput:
        return fn()

    def capture(self, fn: Callable[[], Tuple[torch.Tensor, torch.Tensor]], generators: List[torch.Generator]) -> None:
        self.fn = fn

    def replay(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.fn()


# -- the graphed step ------------------------------------------------------------------------------------


class GraphedStep:
    """:func:`train_step` (with an optimizer step every batch) captured once and replayed.

    Args:
        parts: the step's model, optimizer and settings (`grad_accum` 1, no fp16 scaler).
        warmup: eager steps before the capture.
        recorder: what captures (default: a CUDA graph on `parts.device`).
    """

    def __init__(self, parts: StepParts, warmup: int = WARMUP_STEPS, recorder: Optional[Recorder] = None) -> None:
        if parts.grad_accum != 1:
            raise ValueError(f"expected grad_accum 1 for a graphed step, got {parts.grad_accum}")
        self.parts, self.warmup = parts, int(warmup)
        self.recorder = recorder if recorder is not None else CudaGraphRecorder(parts.device)
        self.steps = 0
        self.static: Optional[Dict[str, torch.Tensor]] = None
        self.signature: Optional[tuple] = None
        self.lrs: List[torch.Tensor] = []
        self.cursor: Optional[torch.Tensor] = None
        self.failed: Optional[str] = None
        self._said_shape = False

    @classmethod
    def for_run(cls, parts: StepParts, config: TrainConfig) -> Optional["GraphedStep"]:
        """The graphed step of a run, or None (after one log line saying why) where its step
        cannot be captured."""
        reason = graph_blocker(parts, config)
        if reason is not None:
            logger.info("training step: eager, not a CUDA graph (%s)", reason)
            return None
        logger.info("training step: one CUDA graph (captured after %d eager warm-up steps)", WARMUP_STEPS)
        return cls(parts)

    def __call__(self, raw: Mapping[str, Any], boundary: bool = True) -> StepOutput:
        """One training batch, as :func:`train_step` with `boundary`: eagerly during warm-up,
        after a failed capture and for a batch of other shapes; else by replaying the graph."""
        self.steps += 1
        if self.failed is not None:
            return self._eager(raw, boundary)
        if self.steps <= self.warmup:
            return self.recorder.warm(lambda: train_step(self.parts, raw, boundary))
        signature = _signature(raw)
        if self.signature is None and boundary:
            try:
                self._capture(raw, signature)
            except RuntimeError as err:  # recorded once; the run goes on eagerly
                self.failed = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                logger.warning("training step: CUDA graph capture failed (%s); training eagerly", self.failed)
                return self._eager(raw, boundary)
        if signature != self.signature or not boundary:
            if not self._said_shape:
                logger.info("training step: a batch of shapes %s differs from the captured %s; such batches "
                            "run eagerly", _shapes(signature), _shapes(self.signature))
                self._said_shape = True
            return self._eager(raw, boundary)
        return self._replay(raw)

    def _eager(self, raw: Mapping[str, Any], boundary: bool) -> StepOutput:
        # After a replay the gradients hold the graph's last values: start from none.
        self.parts.optimizer.zero_grad(set_to_none=True)
        return train_step(self.parts, raw, boundary)

    def _capture(self, raw: Mapping[str, Any], signature: tuple) -> None:
        device = self.parts.device
        self.static = {key: raw[key].to(device, copy=True) for key in STEP_KEYS if key in raw}
        # float32 is what the fused CUDA kernels read; the CPU's fused kernels read a double
        # (there the replayed step then equals the eager one bit for bit)
        dtype = torch.float32 if device.type == "cuda" else torch.float64
        self.lrs = [torch.tensor(float(group["lr"]), dtype=dtype, device=device)
                    for group in self.parts.optimizer.param_groups]
        mixup = self._mixup()
        self.cursor = torch.zeros((), dtype=torch.int64, device=device) if mixup is not None else None
        self.parts.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates them
        self.recorder.capture(self._captured, self._generators())
        self.signature = signature

    def _captured(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """What the graph holds: the whole step on the static batch, the optimizer reading the
        learning rate from `self.lrs` and the mixup its ratios at `self.cursor`."""
        mixup = self._mixup()
        with _device_lr(self.parts.optimizer, self.lrs):
            if mixup is not None:
                mixup.capturing(self.cursor)
            try:
                loss, correct, _ = train_step(self.parts, self.static, boundary=True)
            finally:
                if mixup is not None:
                    mixup.capturing(None)
        return loss, correct

    def _replay(self, raw: Mapping[str, Any]) -> StepOutput:
        for key, buffer in self.static.items():
            buffer.copy_(raw[key], non_blocking=True)
        for tensor, group in zip(self.lrs, self.parts.optimizer.param_groups):
            tensor.fill_(float(group["lr"]))  # the schedule's rate of this step
        mixup = self._mixup()
        if mixup is not None:
            count = mixup.count_for(int(self.static["audio"].shape[0]))
            self.cursor.fill_(mixup.advance(count, self.parts.device))
        loss, correct = self.recorder.replay()
        return loss, correct, int(self.static["label"].shape[0])

    def _mixup(self):
        """The preparer's mixup when it reads Beta ratios (through the cursor), else None."""
        mixup = getattr(self.parts.inference.preparer, "mixup", None)
        return mixup if mixup is not None and mixup.alpha is not None and mixup.training else None

    def _generators(self) -> List[torch.Generator]:
        """The augmentations' generators on the step's device (created now if not yet used)."""
        out = []
        for module in self.parts.inference.preparer.modules():
            if isinstance(module, SeededModule):
                generator = module.generator_for(self.parts.device)
                if generator not in out:
                    out.append(generator)
        return out


@contextlib.contextmanager
def _device_lr(optimizer: torch.optim.Optimizer, lrs: List[torch.Tensor]) -> Iterator[None]:
    """Within the block each param group's `lr` is its device tensor and Adam's `capturable`
    is on; afterwards both are as they were (floats for the schedule and the checkpoint)."""
    saved = [(group["lr"], group.get("capturable")) for group in optimizer.param_groups]
    try:
        for group, tensor in zip(optimizer.param_groups, lrs):
            group["lr"] = tensor
            if "capturable" in group:
                group["capturable"] = True
        yield
    finally:
        for group, (lr, capturable) in zip(optimizer.param_groups, saved):
            group["lr"] = lr
            if capturable is not None:
                group["capturable"] = capturable


def _signature(raw: Mapping[str, Any]) -> tuple:
    return tuple((key, tuple(raw[key].shape), raw[key].dtype) for key in STEP_KEYS if key in raw)


def _shapes(signature: Optional[tuple]) -> str:
    return "none" if signature is None else ", ".join(f"{key} {list(shape)}" for key, shape, _ in signature)
