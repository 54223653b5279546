"""avsc-eval throughput (segments/s) on this machine, against the loader alone.

Random stage-one rows (default FeatureConfig: audio (6, 128, 39) float32, frames (2, 3, 224,
224) uint8) are scored with untrained joint checkpoints of two sizes, batch 32:

* demo:  ModelConfig(audio_widths=(24, 48, 96), video="small_cnn", fusion_hidden=(128, 64))
* paper: ModelConfig() (FCNN 144/288/576, DenseNet-161 randomly initialized, head 512/128/64)

Baseline, measured in the same run: the loader alone, i.e. the same shard reads through
`make_loader` and the same eval-mode `BatchPreparer` (normalization), without the model. The
ratio says how close scoring comes to the loader's speed (1.0 = the loader is the limit).
A second reference is the model alone (`Scorer.probabilities` on one batch already in memory,
run as many times as the split has batches): where the model is slower than the loader,
avsc-eval can at best reach it. Each figure is the best of `--repeat` passes, the three
measurements alternating, so load from other processes on a shared machine affects all alike. `evaluate_checkpoint`'s own
figure covers its scoring loop (loader + model); its wall time also includes loading the
checkpoint, opening the shards and writing predictions.tsv, metrics.json and the figure.

Run: .venv/bin/python bench/bench_eval.py [--rows 320] [--paper-rows 32] [--workers 2] [--repeat 2]
(about 4 minutes on 2 CPU cores, nearly all of it DenseNet-161; --paper-rows 0 skips it)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from avsc_pipeline.sections.loading import LoaderConfig
from avsc_pipeline.dataio.loader import make_loader
from avsc_pipeline.dataio.samplers import EpochSampler
from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint, loader_config_of, open_split
from avsc_pipeline.evaluation.loading import load_scorer
from avsc_pipeline.testing import write_test_checkpoint
from avsc_pipeline.sections.model import ModelConfig
from avsc_pipeline.testing import write_random_folder
from common import int_options

BATCH = 32
SHARD_ROWS = 160
MODELS: Dict[str, ModelConfig] = {
    "demo": ModelConfig(audio_widths=(24, 48, 96), video="small_cnn", fusion_hidden=(128, 64)),
    "paper": ModelConfig(),
}


def loader_rate(ckpt: Path, folder: Path, workers: int) -> float:
    """Segments/s of reading and preparing every row of `folder` (no model)."""
    scorer, raw_ckpt = load_scorer(ckpt, "cpu")
    config = loader_config_of(raw_ckpt, BATCH, workers, str(ckpt))
    with open_split(folder, scorer, ckpt) as dataset:
        sampler = EpochSampler(np.arange(len(dataset)), shuffle=False, num_replicas=1, rank=0)
        start = time.perf_counter()
        count = 0
        with torch.no_grad():
            for raw in make_loader(dataset, sampler, config, scorer.device, drop_last=False):
                count += len(scorer.preparer(raw)["audio"])
        return count / (time.perf_counter() - start)


def model_rate(ckpt: Path, rows: int) -> float:
    """Segments/s of the model and normalization alone, on one random raw batch in memory."""
    scorer, _ = load_scorer(ckpt, "cpu")
    shape = scorer.feature_config
    generator = torch.Generator().manual_seed(0)
    batch = {"audio": torch.randn((BATCH,) + shape.audio_shape, generator=generator),
             "video": torch.randint(0, 256, (BATCH,) + shape.video_shape, generator=generator, dtype=torch.uint8)}
    batches = max(1, rows // BATCH)
    start = time.perf_counter()
    for _ in range(batches):
        scorer.probabilities(batch)
    return batches * BATCH / (time.perf_counter() - start)


def eval_rate(ckpt: Path, folder: Path, out: Path, workers: int) -> Dict[str, float]:
    start = time.perf_counter()
    result = evaluate_checkpoint(ckpt, folder, out_dir=out, batch_size=BATCH, device="cpu", progress=False,
                                 workers=workers)
    wall = time.perf_counter() - start
    return {"loop": result["segments_per_s"], "wall": result["n_segments"] / wall}


def main() -> None:
    args = int_options(__doc__, rows=320, paper_rows=32, workers=2, repeat=2)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, config in MODELS.items():
            rows = args.rows if name == "demo" else args.paper_rows
            if rows < 1:  # e.g. --paper-rows 0: skip that model
                continue
            folder = write_random_folder(root / name / "evaluate", [SHARD_ROWS] * (rows // SHARD_ROWS)
                                         + ([rows % SHARD_ROWS] if rows % SHARD_ROWS else []))
            ckpt = write_test_checkpoint(root / name / "run" / "best.pt", folder, config,
                                         loader=LoaderConfig(batch_size=BATCH, num_workers=args.workers))
            best_loader, model, best = 0.0, 0.0, {"loop": 0.0, "wall": 0.0}
            for _ in range(args.repeat):
                best_loader = max(best_loader, loader_rate(ckpt, folder, args.workers))
                model = max(model, model_rate(ckpt, rows))
                rates = eval_rate(ckpt, folder, root / name / "out", args.workers)
                best = {k: max(best[k], rates[k]) for k in best}
            lines.append(f"  {name:6s} {rows:4d} rows   loader alone {best_loader:7.1f} seg/s   "
                         f"model alone {model:7.1f} seg/s   avsc-eval {best['loop']:7.1f} seg/s = "
                         f"{best['loop'] / best_loader:5.3f}x the loader, {best['loop'] / model:4.2f}x the model   "
                         f"(end to end {best['wall']:.1f} seg/s)")
    print(f"CPU, torch threads {torch.get_num_threads()}, batch {BATCH}, {args.workers} loader workers, "
          f"best of {args.repeat}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
