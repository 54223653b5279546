"""Parameters and training memory at batch 32 of Table 4's models (beyond the paper).

For each joint model of Table 4 (FCNN or PANNs' CNN14, DenseNet-161 or CLIP ViT-B/16, the MLP
head, 10 classes) it counts the parameters (all, and those the row trains) and gives the device
memory of one training step at batch 32 under bf16 autocast (the recipe's `train.amp: auto`):

- on CUDA (`--device cuda`) it is measured: `torch.cuda.max_memory_allocated` over a real
  step of the trainer's forward path (`Inference`: the batch preparer with its front end, the
  model, autocast), Adam's step included;
- on the CPU it is estimated, and says so: 16 bytes per trained parameter (float32 weight,
  gradient and Adam's two moments), 4 per frozen one, plus the tensors autograd saves for the
  backward pass, measured on the CPU under bf16 autocast at `--probe-batch` (each storage
  counted once) and scaled linearly to batch 32, plus the batch itself on the device. Allocator
  rounding, cuDNN workspaces and CUDA's context (~0.5 GB) are not counted.

Random weights (no file is read). Every figure is appended to `--out` (JSON lines) as it is
measured. Not a `bench_*.py` benchmark (`make bench` does not run it): one-off figures for the
README.

Run: python bench/beyond_memory.py [--device cpu|cuda] [--batch 32] [--probe-batch 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from avsc_pipeline.dataio.preparation import BatchPreparer
from avsc_pipeline.inference import Inference
from avsc_pipeline.models.classifier import build_model, count_parameters
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.sections.loading import BatchAugmentConfig
from avsc_pipeline.sections.model import ModelConfig

CLIP = "timm:vit_base_patch16_clip_224.openai"
#: Table 4's models: (row, model section, trained extractors).
ROWS = (
    ("fcnn-densenet161", dict(audio="fcnn", video="densenet161"), True),
    ("cnn14-densenet161", dict(audio="panns_cnn14", video="densenet161"), True),
    ("fcnn-clip", dict(audio="fcnn", video=CLIP), True),
    ("cnn14-clip", dict(audio="panns_cnn14", video=CLIP), True),
    ("cnn14-clip-cached", dict(audio="panns_cnn14", video=CLIP), False),
)
LOGMEL, WAVEFORM = FeatureConfig(), FeatureConfig(audio="waveform")


def batch_of(features: FeatureConfig, size: int) -> Dict[str, torch.Tensor]:
    """A loader batch of the stored shapes: audio as stored, frames uint8, labels."""
    return {"audio": torch.rand((size,) + features.audio_shape) * 0.1,
            "video": torch.randint(0, 256, (size,) + features.video_shape, dtype=torch.uint8),
            "label": torch.arange(size) % 10}


def saved_bytes(inference: Inference, prepared: Dict[str, Any]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward (each storage once)."""
    seen: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        inference.logits(prepared)
    return sum(seen.values())


def one_row(name: str, model_kwargs: Dict[str, Any], trained: bool, device: torch.device, batch: int,
            probe_batch: int) -> Dict[str, Any]:
    features = WAVEFORM if model_kwargs["audio"] == "panns_cnn14" else LOGMEL
    model = build_model(ModelConfig(**model_kwargs), 10, features.audio_shape[0], load_weights=False)
    model.set_frozen(audio=not trained, video=not trained)
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    record = {"row": name, "parameters": total, "trainable": trainable}
    augment = BatchAugmentConfig() if trained else None
    preparer = BatchPreparer(10, None, (model.frame_mean, model.frame_std), augment, features=features).to(device)
    precision = torch.bfloat16
    inference = Inference(model.to(device), preparer, device, precision, channels_last=True)
    if device.type == "cuda":
        record.update(measured_step(inference, model, features, batch, trained, device))
        return record
    if not trained:  # the cached row trains the head on stored embeddings: no extractor activations
        activations = 0
    else:
        model.train(), preparer.train()
        prepared = inference.prepare(batch_of(features, probe_batch))
        activations = saved_bytes(inference, prepared) * batch / probe_batch
    frozen = total - trainable
    inputs = sum(t.numel() * t.element_size() for t in batch_of(features, batch).values())
    inputs += batch * 2 * 3 * features.image_size ** 2 * 4  # the normalized float32 frames
    estimate = 16 * trainable + 4 * frozen + activations + inputs
    record.update(how="estimated", activations_gib=activations / 2 ** 30, estimate_gib=estimate / 2 ** 30)
    return record


def measured_step(inference: Inference, model: torch.nn.Module, features: FeatureConfig, batch: int,
                  trained: bool, device: torch.device) -> Dict[str, Any]:
    """Peak memory of a training step on CUDA (the cached row: a head step on stored embeddings
    after an embedding pass of the batch)."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # the second step has Adam's moments allocated
        model.train(), inference.preparer.train()
        prepared = inference.prepare(batch_of(features, batch))
        if trained:
            logits = inference.logits(prepared)
        else:
            with torch.no_grad():
                given = {part: inference.embeddings(part, prepared) for part in ("audio", "video")}
            logits = inference.logits(prepared, given=given)
        loss = torch.nn.functional.cross_entropy(logits.float(), prepared["label"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    return {"how": "measured", "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--probe-batch", type=int, default=4, help="CPU estimate: the batch measured and scaled")
    parser.add_argument("--rows", default=None, help="comma-separated rows (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/beyond_memory.jsonl"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chosen = set(args.rows.split(",")) if args.rows else None
    for name, kwargs, trained in ROWS:
        if chosen is not None and name not in chosen:
            continue
        started = time.perf_counter()
        record = one_row(name, kwargs, trained, device, args.batch, args.probe_batch)
        record.update(device=str(device), batch=args.batch, seconds=round(time.perf_counter() - started, 1))
        with open(args.out, "a", encoding="utf-8") as handle:  # each figure as it is measured
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
