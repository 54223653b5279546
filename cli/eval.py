"""`avsc-eval`: score a checkpoint on a split of feature shards, as DCASE 2021 Task 1b does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from avsc_pipeline.models.config import MODALITIES  # imports no model (nor torch)

from avsc_pipeline_cli.common import Command, device_option, setup_logging



@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The checkpoint to score (RUN_DIR/best.pt).")
@click.argument("split_dir", metavar="FEATURES_SPLIT_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder  [default: RUN_DIR/eval/<split>, or <split>-<modality>]")
@click.option("--batch-size", type=click.IntRange(min=1), help="Segments per batch  [default: the run's]")
@click.option("--workers", type=click.IntRange(min=0), help="Loader worker processes  [default: the run's]")
@device_option
@click.option("--modality", type=click.Choice(MODALITIES), default=None,
              help="audio or video: score one modality of a joint model, the other's embedding replaced by "
                   "its training-set mean  [default: the model's own]")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(checkpoint: Path, split_dir: Path, out_dir: Optional[Path], batch_size: Optional[int],
         workers: Optional[int], device: str, modality: Optional[str], progress: bool, verbose: int) -> None:
    """Score CHECKPOINT on every one-second segment of FEATURES_SPLIT_DIR.

    Writes predictions.tsv (the task's output format) and, for a split with labels,
    metrics.json and confusion_matrix.png; prints segment and clip scores.

    Example: avsc-eval --checkpoint runs/demo/joint/best.pt data/demo-features/evaluate
    """
    setup_logging(verbose)
    from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(checkpoint, split_dir, out_dir=out_dir, batch_size=batch_size, device=device,
                                     modality=modality, progress=progress, workers=workers)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    folder = result["files"]["predictions.tsv"].parent
    speed = (f"{result['n_segments']} segments in {result['seconds']:.1f} s "
             f"({result['segments_per_s'] or 0.0:.0f} segments/s)")
    if not result["labeled"]:
        click.echo(f"{split_dir}: no labels, so no metrics were computed; {speed}")
        click.echo(f"wrote {result['files']['predictions.tsv']}")
        return
    click.echo(f"{result['run']}, {result['split']} ({result['model_modality']} model, scored on "
               f"{result['modality']}): {speed}")
    click.echo(headline_tables(result))
    click.echo(f"wrote {', '.join(p.name for p in result['files'].values())} in {folder}")


def headline_tables(result: Dict[str, Any]) -> str:
    """Segment scores, then clip scores (segment probabilities averaged per clip)."""
    header = ["", "n", "accuracy", "log loss", "class-mean accuracy", "class-mean log loss"]
    rows = [
        ["segments", str(result["n_segments"]), _pct(result["accuracy"]), f"{result['log_loss']:.3f}",
         _pct(result["class_mean_accuracy"]), f"{result['class_mean_log_loss']:.3f}"],
        ["clips", str(result["n_clips"]), _pct(result["clip_accuracy"]), f"{result['clip_log_loss']:.3f}",
         _pct(result["clip_class_mean_accuracy"]), f"{result['clip_class_mean_log_loss']:.3f}"],
    ]
    return "\n\n".join(_table(header, [row]) for row in rows)


def _table(header: Sequence[str], rows: List[List[str]]) -> str:
    widths = [max(len(line[i]) for line in [list(header)] + rows) for i in range(len(header))]
    lines = []
    for line in [list(header)] + rows:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100.0 * value:.1f} %"


if __name__ == "__main__":
    main()
