"""The `train:` section: how a model is trained (optimizer, schedule, freezing, speed, seeds).

What is trained (audio, video or joint) is the `model:` section's `modality`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

from avsc_pipeline.config import check_choice, check_int, check_unit

#: `train.amp`: mixed precision on CUDA (`devices.amp_dtype` turns it into a dtype).
AMP_MODES = ("auto", "off", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
#: `train.compile_scope`: compiled regions (the default) or the whole model.
COMPILE_SCOPES = ("regions", "model")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "warm_restarts")
#: `train.validation`: the held-out share of the training locations.
VALIDATION_LOCATIONS = "locations"
_FOLDER_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: one step of the recipe (the audio, video or joint model).

    Attributes:
        epochs: passes over the training rows (originals plus the sampled augmented rows).
        optimizer: `sgd` (with `momentum`), `adam` or `adamw`.
        lr: the initial learning rate.
        weight_decay: L2 penalty (`adam`, `sgd`) or decoupled decay (`adamw`).
        momentum: SGD momentum.
        scheduler: `none`, `cosine` (one cosine from `lr` to `min_lr` over the run), or
            `warm_restarts` (Hu et al.'s `LR_WarmRestart` callback, set at every optimizer step:
            cosine annealing from `lr` to `min_lr`, restarting at `restart_epochs`, the period
            doubling at each restart; see :func:`avsc_pipeline.training.optim.warm_restart_lr`).
        restart_epochs: the callback's restart epochs, numbered as it numbers them (1-based
            from the first restart on: 3, 7, ... restart at the 0-based epochs 2, 6, ...).
        restart_period: the first cosine period of `warm_restarts` in epochs (the callback's
            `Tmult`, 2), doubled at each restart.
        min_lr: the floor of `cosine` and `warm_restarts`.
        lr_decay: Keras' inverse-time decay on top of the schedule, `rate / (1 + lr_decay *
            step)` with `step` the optimizer steps since the start of the run (the authors'
            `SGD(decay=1e-6)`); 0 for none.
        init_from: a checkpoint of an earlier step (e.g. `runs/paper/audio/best.pt`): its
            extractors initialize this model's (the FCNN of an audio run, the video backbone of a
            video run). Without it the extractors start from their initial or pre-trained weights.
        freeze_audio: keep the audio extractor fixed (eval mode, no gradient): Table 1's Fine_A off.
        freeze_video: keep the video extractor fixed: Table 1's Fine_V off.
        cache_embeddings: compute a frozen extractor's embeddings once when its input is not
            augmented, so that training the rest takes seconds.
        amp: mixed precision on CUDA: `auto` (bf16 where supported), `bf16`, `fp16` (with a
            gradient scaler) or `off`; CPU runs in float32.
        channels_last: channels-last memory format on CUDA.
        compile: `torch.compile` the model (after wrapping it in DDP, so that gradient buckets
            overlap with the backward).
        compile_mode: `default`, `reduce-overhead` (CUDA graphs: the batch shapes are static
            since `loader.drop_last` keeps every training batch full; it pays at the paper's batch
            of 32, which leaves a large GPU launch-bound) or `max-autotune`.
        compile_scope: what `compile` compiles: `regions` (the FCNN, and each dense block or
            stage of the video backbone, each compiled once and reused: minutes less than the
            whole model; the compiler's cache is kept in the run folder and reused on
            `--resume`) or `model` (the whole model as one graph).
        cuda_graph: on CUDA, capture the whole training step (batch preparation, forward,
            backward, optimizer step) in one CUDA graph and replay it: one launch per step
            instead of hundreds, which is what bounds the paper's batch of 32 on a large GPU.
            Off, or where capture cannot work (CPU, several processes, `compile`,
            `grad_accum` > 1, fp16 loss scaling, video operations other than Identity,
            Sharpness and Contrast), the step runs eagerly; the log says which and why.
        grad_accum: batches whose gradients are summed before each optimizer step.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        seed: the run seed (initialization, epoch order, workers, augmentation streams).
        deterministic: deterministic algorithms (bit-exact resumption on CPU).
        select_by: the validation figure that picks `best.pt`: `log_loss` or `accuracy`.
        validation: what `best.pt` is selected on: `locations` (a held-out share of the
            training locations, `loader.val_fraction`) or the name of a features split folder
            beside `train` (e.g. `evaluate`, as the authors selected), then trained on all of
            `train`. `avsc-eval` marks figures scored on that same split "selected on the
            scored split".
        dist_timeout_s: how long a collective waits for the other processes under torchrun
            (the NCCL watchdog), e.g. while rank 0 computes the audio statistics.
        tensorboard: write live curves to `RUN_DIR/tensorboard` (rank 0): the figures of
            `metrics.csv` per epoch, and the batch loss and accuracy, learning rate, samples/s and
            data wait every `tensorboard_every` steps; needs the `tensorboard` package (the
            `tensorboard` extra). Watch them with `tensorboard --logdir runs/`.
        tensorboard_every: optimizer steps between two writes of the step figures.
    """

    epochs: int = 30
    optimizer: str = "adam"
    lr: float = 1e-5
    weight_decay: float = 1e-5
    momentum: float = 0.9
    scheduler: str = "none"
    restart_epochs: Tuple[int, ...] = (3, 7, 15, 31, 63, 127)
    restart_period: float = 2.0
    min_lr: float = 1e-5
    lr_decay: float = 0.0
    init_from: Optional[str] = None
    freeze_audio: bool = False
    freeze_video: bool = False
    cache_embeddings: bool = True
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    compile_scope: str = "regions"
    cuda_graph: bool = True
    grad_accum: int = 1
    grad_clip: Optional[float] = None
    seed: int = 0
    deterministic: bool = False
    select_by: str = "log_loss"
    validation: str = "locations"
    dist_timeout_s: float = 1800.0
    tensorboard: bool = False
    tensorboard_every: int = 50

    def __post_init__(self) -> None:
        check_choice(self, "optimizer", OPTIMIZERS)
        check_choice(self, "scheduler", SCHEDULERS)
        check_choice(self, "amp", AMP_MODES)
        check_choice(self, "select_by", ("log_loss", "accuracy"))
        check_choice(self, "compile_mode", COMPILE_MODES)
        check_choice(self, "compile_scope", COMPILE_SCOPES)
        if not self.dist_timeout_s > 0:
            raise ValueError(f"expected dist_timeout_s > 0, got {self.dist_timeout_s!r}")
        check_int(self, ("epochs", "grad_accum", "tensorboard_every"), minimum=1)
        check_int(self, ("seed",), minimum=0)
        check_unit(self, ("momentum",))
        for name in ("lr", "weight_decay", "min_lr", "lr_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"expected {name} >= 0, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"expected lr > 0, got {self.lr!r}")
        if list(self.restart_epochs) != sorted(set(self.restart_epochs)) or any(
                not isinstance(e, int) or e < 1 for e in self.restart_epochs):
            raise ValueError(f"expected increasing positive restart_epochs, got {list(self.restart_epochs)}")
        if isinstance(self.restart_period, bool) or not isinstance(self.restart_period, (int, float)) \
                or not self.restart_period > 0:
            raise ValueError(f"expected restart_period > 0, got {self.restart_period!r}")
        if not isinstance(self.validation, str) or not _FOLDER_NAME.fullmatch(self.validation) \
                or self.validation in (".", ".."):
            raise ValueError(f"expected validation `locations` or a split folder name (letters, digits, '.', '_', "
                             f"'-'), got {self.validation!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"expected grad_clip > 0 or None, got {self.grad_clip!r}")
