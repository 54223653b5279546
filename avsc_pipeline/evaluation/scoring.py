"""Running a model: the one path from raw batches to class probabilities.

:class:`Scorer` turns raw batches (audio features in their stored dtype, uint8 frames), as the
shard loader yields them and as stage one computes them from raw files, into class
probabilities: a :class:`~avsc_pipeline.dataio.preparation.BatchPreparer` in eval mode, the
model's one forward in eval mode under the run's precision policy
(:func:`avsc_pipeline.devices.amp_dtype` of `train.amp`: bf16 autocast on a GPU that has it,
float32 on the CPU), and a softmax in float64. Training's validation, `avsc-eval`
(:mod:`.evaluate`) and `avsc-predict` (:mod:`.recordings`) all score through it and through
:func:`score_rows`, so their figures agree. :class:`ScorerLike` is the interface a
:class:`Scorer`, an ensemble and test-time augmentation share.

With `modality="audio"` (or `"video"`) a joint model's other embedding is replaced by its
mean over the training set, stored in the checkpoint (`embedding_means`), which shows what
each modality contributes on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, ContextManager, Dict, List, Mapping, Optional, Protocol, Tuple

import numpy as np
import torch

from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import ShardLoader, make_loader
from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.dataio.samplers import EpochSampler
from avsc_pipeline.inference import Inference
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.sections.loading import LoaderConfig
from avsc_pipeline.models.checkpoint import ModelArtifact
from avsc_pipeline.models.classifier import SceneClassifier

logger = logging.getLogger(__name__)


def checkpoint_config_hash(artifact: ModelArtifact) -> str:
    """16 hex digits identifying a checkpoint's resolved config sections (as `config_hash` does
    for one section: SHA-256 of the key-sorted, compact JSON)."""
    blob = json.dumps(artifact.config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ScorerLike(Protocol):
    """What every scorer offers: a :class:`Scorer`, an :class:`~.ensemble.Ensemble` of them, a
    :class:`~.tta.TTAScorer` around either. :func:`score_rows` and `avsc-eval` take any."""

    @property
    def classes(self) -> List[str]:
        """The C class names, in the probabilities' column order."""

    @property
    def feature_config(self) -> FeatureConfig:
        """The stage-one config the scored features must have been made with."""

    @property
    def with_video(self) -> bool:
        """Whether scoring reads frames."""

    @property
    def device(self) -> torch.device:
        """Where scoring runs (batches are loaded for it)."""

    @property
    def transforms(self) -> Tuple[str, ...]:
        """The test-time transforms averaged over (empty: none)."""

    def eval_mode(self) -> ContextManager[Any]:
        """Models and preparers in eval mode for the block."""

    def probabilities(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """`(B, C)` float64 class probabilities of one raw batch, on the CPU."""

    def probability_pair(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """`(calibrated, uncalibrated)` probabilities of one raw batch, each `(B, C)` float64."""


@dataclass
class Scorer:
    """A model ready to score raw batches on one device, through the one forward path.

    Attributes:
        inference: the model, its batch preparer (used in eval mode: normalization only), the
            memory format and precision (:class:`~avsc_pipeline.inference.Inference`).
        classes: the C class names, in the logits' order.
        feature_config: the stage-one config the model's features were made with.
        modality: what is scored: the model's own modality, or `audio`/`video` of a joint model.
        stand_ins: the stored mean embedding standing in for each dropped modality,
            `{"audio": (D_A,)}` or `{"video": (D_V,)}` float32 on the device.
        cached: embedding tables `(N, D)` float32 on the device of frozen extractors, indexed by
            the batch's `index` (training's cache); the inputs they replace are not read.
        temperature: the logits are divided by it before the softmax (1.0: uncalibrated).
    """

    inference: Inference
    classes: List[str]
    feature_config: FeatureConfig
    modality: str
    stand_ins: Dict[str, torch.Tensor] = field(default_factory=dict)
    cached: Dict[str, torch.Tensor] = field(default_factory=dict)
    temperature: float = 1.0
    transforms: Tuple[str, ...] = ()

    @property
    def model(self) -> SceneClassifier:
        """The classifier."""
        return self.inference.model

    @property
    def preparer(self) -> BatchPreparer:
        """The batch preparer."""
        return self.inference.preparer

    @property
    def device(self) -> torch.device:
        """Where scoring runs."""
        return self.inference.device

    @property
    def precision(self) -> Optional[torch.dtype]:
        """The autocast dtype (None: float32)."""
        return self.inference.precision

    @property
    def with_video(self) -> bool:
        """Whether scoring reads frames (the model uses video, neither replaced nor cached)."""
        return self.model.uses_video and "video" not in self.stand_ins and "video" not in self.cached

    def eval_mode(self) -> ContextManager[Any]:
        """Model and preparer in eval mode for the block, as they were afterwards."""
        return self.inference.eval_mode()

    @torch.no_grad()
    def logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits of one raw batch, `(B, C)` float32 on the device (call within :meth:`eval_mode`).

        Args:
            batch: `audio (B, 6, F, T)` float16/float32 as stored, `video (B, K, 3, H, W)` uint8
                when :attr:`with_video`, optionally `label (B,)` int64 (-1 where unknown) and,
                with :attr:`cached` tables, `index (B,)` int64 rows.
        """
        audio = batch["audio"]
        size = audio.shape[0]
        label = batch.get("label")
        raw = {"audio": audio, "label": torch.full((size,), -1, dtype=torch.int64) if label is None else label}
        if "index" in batch:
            raw["index"] = batch["index"]
        if self.with_video:
            if batch.get("video") is None:
                raise ValueError(f"expected frames for a {self.model.modality!r} model, got a batch without video")
            raw["video"] = batch["video"]
        prepared = self.inference.prepare(raw)
        given: Dict[str, torch.Tensor] = {}
        for part in ("audio", "video"):
            if part in self.stand_ins:
                given[part] = self.stand_ins[part].unsqueeze(0).expand(size, -1)
            elif part in self.cached:
                given[part] = self.cached[part][batch["index"].to(self.device)]
        return self.inference.logits(prepared, given).float()

    def probabilities(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Class probabilities of one raw batch: `(B, C)` float64 on the CPU, the softmax of the
        logits divided by :attr:`temperature`, computed in float64."""
        return self.device_outputs(batch, pair=False)[0].cpu()

    def log_probability_pair(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of one raw batch from one forward: `(calibrated, uncalibrated)`,
        each `(B, C)` float64 on the CPU (the log-softmax of the logits divided by
        :attr:`temperature`, and of the logits as they are)."""
        calibrated, uncalibrated = self.device_outputs(batch, pair=True)
        return calibrated.cpu(), uncalibrated.cpu()

    def device_outputs(self, batch: Mapping[str, Any], pair: bool) -> Tuple[torch.Tensor, ...]:
        """What :meth:`probabilities` (`pair` False: a 1-tuple) or :meth:`log_probability_pair`
        (`pair` True) return, left on the device (no host synchronization): each `(B, C)` float64."""
        logits = self.logits(batch).double()
        if not pair:
            return (torch.softmax(logits / self.temperature, dim=1),)
        return torch.log_softmax(logits / self.temperature, dim=1), torch.log_softmax(logits, dim=1)

    def probability_pair(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """`(calibrated, uncalibrated)` probabilities of one raw batch, each `(B, C)` float64 on
        the CPU, from one forward (what evaluation reports as `log_loss` and
        `log_loss_uncalibrated`)."""
        calibrated, uncalibrated = self.log_probability_pair(batch)
        return calibrated.exp(), uncalibrated.exp()


#: The scoring batch on a GPU (`avsc-eval`, training's validation, the embedding cache): scoring
#: keeps no activations for a backward, so a batch far larger than training's 32 fits and keeps
#: the GPU busy.
CUDA_EVAL_BATCH = 256


def scoring_config(config: LoaderConfig, device: "torch.device | str", batch_size: Optional[int] = None,
                   workers: Optional[int] = None) -> LoaderConfig:
    """A loader section for a scoring pass: every row once (`drop_last` off), `batch_size` when
    given, else at least `CUDA_EVAL_BATCH` on CUDA and the section's own elsewhere; `workers`
    when given."""
    changes: Dict[str, Any] = {"drop_last": False}
    if batch_size is not None:
        changes["batch_size"] = batch_size
    elif torch.device(device).type == "cuda":
        changes["batch_size"] = max(config.batch_size, CUDA_EVAL_BATCH)
    if workers is not None:
        changes["num_workers"] = workers
    return dataclasses.replace(config, **changes)


def scoring_loader(dataset: ShardDataset, rows: np.ndarray, loader_config: LoaderConfig,
                   device: torch.device) -> ShardLoader:
    """The loader :func:`score_rows` reads `rows` with, in order, every row once; pass it back to
    each call over the same rows to keep its workers (with `loader_config.persistent_workers`)."""
    sampler = EpochSampler(np.asarray(rows, dtype=np.int64), shuffle=False, num_replicas=1, rank=0)
    return make_loader(dataset, sampler, loader_config, device, drop_last=False)


def score_rows(dataset: ShardDataset, scorer: ScorerLike, loader_config: LoaderConfig,
               rows: Optional[np.ndarray] = None, progress: bool = False,
               loader: Optional[ShardLoader] = None) -> np.ndarray:
    """Probabilities of dataset rows, in the order given: how `avsc-eval` scores a split and
    how training scores its validation rows.

    Args:
        dataset: the rows, read with the scorer's `with_video`.
        scorer: the model (put in eval mode for the pass, restored afterwards): a
            :class:`Scorer`, an :class:`~.ensemble.Ensemble` or a :class:`~.tta.TTAScorer`.
        loader_config: batch size and workers (`drop_last` is ignored: every row is scored).
        rows: `(M,)` dataset positions; default every row in row order.
        progress: show a progress bar.
        loader: a :func:`scoring_loader` of these rows to read with (its workers kept between
            calls); default a new one.

    Returns:
        `(M, C)` float64 probabilities, row i for `rows[i]`. A :class:`Scorer`'s outputs stay
        on its device during the pass and are copied to the host once at its end.
    """
    return _score_rows(dataset, scorer, loader_config, rows, progress, pair=False, loader=loader)[0]


def score_rows_pair(dataset: ShardDataset, scorer: ScorerLike, loader_config: LoaderConfig,
                    rows: Optional[np.ndarray] = None, progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """As :func:`score_rows`, from the same single pass: `(calibrated, uncalibrated)`
    probabilities, each `(M, C)` float64 (the scorer's `probability_pair`)."""
    calibrated, uncalibrated = _score_rows(dataset, scorer, loader_config, rows, progress, pair=True)
    return calibrated, uncalibrated


def _score_rows(dataset: ShardDataset, scorer: ScorerLike, loader_config: LoaderConfig, rows: Optional[np.ndarray],
                progress: bool, pair: bool, loader: Optional[ShardLoader] = None) -> List[np.ndarray]:
    from tqdm import tqdm

    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    position = np.full(len(dataset), -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    if loader is None:
        loader = scoring_loader(dataset, rows, loader_config, scorer.device)
    outputs = [np.full((len(rows), len(scorer.classes)), np.nan) for _ in range(2 if pair else 1)]
    if len(rows):
        logger.info("scoring %d rows", len(rows))
    # A Scorer's outputs stay on the device and are copied once at the end: a copy per batch
    # would make the host wait for every batch's forward before reading the next batch.
    on_device = isinstance(scorer, Scorer)
    kept: List[Tuple[torch.Tensor, ...]] = []
    wheres: List[np.ndarray] = []
    with scorer.eval_mode():
        for raw in tqdm(loader, desc="scoring", unit="batch", disable=not progress, leave=False):
            where = position[raw["index"].numpy()]
            if on_device:
                kept.append(scorer.device_outputs(raw, pair))
                wheres.append(where)
                continue
            got = scorer.probability_pair(raw) if pair else (scorer.probabilities(raw),)
            for out, part in zip(outputs, got):
                out[where] = part.numpy()
    if kept:
        where = np.concatenate(wheres)
        for i, out in enumerate(outputs):
            part = torch.cat([k[i] for k in kept]).cpu()
            out[where] = (part.exp() if pair else part).numpy()  # the pair's exp on the host, as probability_pair
    if np.isnan(outputs[0]).any():
        raise RuntimeError(f"expected every row scored, got {int(np.isnan(outputs[0]).any(axis=1).sum())} unscored")
    return outputs
