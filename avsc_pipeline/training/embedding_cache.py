"""Embeddings computed once: frozen extractors whose input is never augmented, and the
training-set mean embeddings that a joint model's checkpoint carries.

A frozen extractor that sees no augmentation gives every row the same embedding every epoch,
so :func:`build_caches` runs it once over the rows a run reads (each distinct frame pair once:
offline-augmented rows share their source row's frames), and training and validation read the
tables instead (:class:`~avsc_pipeline.evaluation.scoring.Scorer` takes them as `cached`). The
embeddings come from the run's one forward path (:class:`~avsc_pipeline.inference.Inference`, in
eval mode: normalized, not augmented), under the run's precision and memory format.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from avsc_pipeline.evaluation.scoring import scoring_config
from avsc_pipeline.sections.loading import BatchAugmentConfig
from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import make_loader
from avsc_pipeline.dataio.samplers import EpochSampler
from avsc_pipeline.dataio.training_input import TrainingInput
from avsc_pipeline.inference import Inference
from avsc_pipeline.sections.train import TrainConfig
from avsc_pipeline.training.distributed import Context, all_max, all_sum

logger = logging.getLogger(__name__)

#: At most this many original training rows give the mean embeddings.
EMBEDDING_MEAN_ROWS = 4096


def cacheable(frozen_audio: bool, frozen_video: bool, train: TrainConfig,
              augment: BatchAugmentConfig) -> Dict[str, bool]:
    """Which frozen extractors see unaugmented input, so their embeddings can be computed once.

    Mixup mixes inputs, and an extractor is not linear, so any mixup rules caching out.
    """
    if not train.cache_embeddings or augment.mixup_fraction > 0:
        return {"audio": False, "video": False}
    audio_augmented = augment.spec_augment or augment.channel_swap_p > 0
    video_augmented = augment.video_num_ops > 0 and any(op != "Identity" for op in augment.video_ops)
    return {"audio": frozen_audio and not audio_augmented, "video": frozen_video and not video_augmented}


def build_caches(inference: Inference, inputs: TrainingInput, train: TrainConfig, augment: BatchAugmentConfig,
                 progress: bool = False, context: Optional[Context] = None) -> Dict[str, torch.Tensor]:
    """The embedding tables of the cacheable frozen extractors, over every row the run reads
    (under several processes each embeds its share and the tables are summed across them).

    Returns:
        `{part: (N, D) float32 on the device}` for each cached part (N = dataset rows).
    """
    caches = {}
    rows = np.concatenate([inputs.split.train, inputs.split.augmented, inputs.split.validation])
    model = inference.model
    for part, ok in cacheable(model.frozen_audio, model.frozen_video, train, augment).items():
        if ok:
            started = time.perf_counter()
            logger.info("frozen %s extractor: caching the embeddings of %d rows", part, len(rows))
            caches[part] = compute_embeddings(inference, part, inputs, rows, progress, context)
            logger.info("frozen %s extractor: embeddings of %d rows cached in %.1f s", part, len(rows),
                        time.perf_counter() - started)
    return caches


@torch.no_grad()
def compute_embeddings(inference: Inference, part: str, inputs: TrainingInput, rows: Sequence[int],
                       progress: bool = False, context: Optional[Context] = None) -> torch.Tensor:
    """One extractor's embeddings of the given dataset rows through the run's forward path in
    eval mode (normalized, not augmented).

    Video embeddings are computed once per distinct frame pair: an offline-augmented row shares
    its source row's frames, so its embedding is copied from the source's. Under several
    processes (`context`) each embeds every `world_size`-th distinct row and the tables are
    summed (their rows are disjoint), so each process ends with the whole table.

    Returns:
        `(len(dataset), D)` float32 on the device; rows not asked for are zero.
    """
    from tqdm import tqdm

    dataset = inputs.dataset
    if part == "video" and not dataset.with_video:
        dataset = ShardDataset(inputs.folders, with_video=True)
    rows = np.asarray(rows, dtype=np.int64)
    distinct = rows
    source = None
    if part == "video":
        source = dataset.frame_sources(rows)
        distinct = np.unique(source)
    distributed = context is not None and context.distributed
    if distributed:
        distinct = distinct[context.rank::context.world_size]
    device = inputs.device
    sampler = EpochSampler(distinct, shuffle=False, num_replicas=1, rank=0)
    batches = make_loader(dataset, sampler, scoring_config(inputs.loader_config, device), device, drop_last=False)
    table: Optional[torch.Tensor] = None
    with inference.eval_mode():
        for raw in tqdm(batches, desc=f"caching {part} embeddings", disable=not progress, leave=False):
            batch = inference.prepare(raw)
            values = inference.embeddings(part, batch)
            if table is None:
                table = torch.zeros(len(dataset), values.shape[1], device=device)
            table[batch["index"].to(device)] = values
    if distributed:
        width = torch.tensor([0 if table is None else table.shape[1]], device=device)
        all_max(width, context)
        if table is None:
            table = torch.zeros(len(dataset), int(width.item()), device=device)
        all_sum(table, context)
    if table is None:
        raise ValueError("expected rows to embed, got none")
    if source is not None:
        table[torch.as_tensor(rows, device=device)] = table[torch.as_tensor(source, device=device)]
    return table


@torch.no_grad()
def embedding_means(inference: Inference, inputs: TrainingInput, caches: Dict[str, torch.Tensor],
                    seed: int) -> Dict[str, torch.Tensor]:
    """Mean E_A and E_V of a joint model over (up to 4,096 of) the original training rows.

    Returns:
        `{"audio": (D_A,), "video": (D_V,)}` float32 on the CPU.
    """
    rows = inputs.split.train
    if len(rows) > EMBEDDING_MEAN_ROWS:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, EMBEDDING_MEAN_ROWS, replace=False))
    index = torch.as_tensor(rows, device=inputs.device)
    means = {}
    if len(caches) < 2:
        logger.info("mean embeddings of the joint model over %d training rows...", len(rows))
    for part in ("audio", "video"):
        # Rank 0 alone computes the means (for the checkpoint it writes): no collective here.
        table = caches[part] if part in caches else compute_embeddings(inference, part, inputs, rows)
        means[part] = table[index].mean(0).cpu()
    return means
