"""`avsc-eval`: score a checkpoint on a split of feature shards, as DCASE 2021 Task 1b does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from avsc_pipeline.sections.model import MODALITIES  # imports no model (nor torch)

from avsc_pipeline_cli.common import (Command, checkpoints_option, device_option, ensemble_options, output_folder,
                                      scoring_options, setup_logging)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@checkpoints_option
@click.argument("split_dir", metavar="FEATURES_SPLIT_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder  [default: RUN_DIR/eval/<split>, or <split>-<modality>; an ensemble's "
                   "<first RUN_DIR>/eval/<split>-ensemble; -tta-..., -uncalibrated appended]")
@ensemble_options(auto=True)
@click.option("--validation-split", "validation_split", type=click.Path(file_okay=False, path_type=Path),
              help="An ensemble's training split: its members' validation locations there fit --weights auto and "
                   "check that the ensemble beats its best member  [default: train beside FEATURES_SPLIT_DIR]")
@scoring_options
@click.option("--batch-size", type=click.IntRange(min=1), help="Segments per batch  [default: the run's]")
@click.option("--workers", type=click.IntRange(min=0), help="Loader worker processes  [default: the run's]")
@device_option
@click.option("--modality", type=click.Choice(MODALITIES), default=None,
              help="audio or video: score one modality of a joint model, the other's embedding replaced by "
                   "its training-set mean  [default: the model's own]")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(checkpoints: Tuple[Path, ...], split_dir: Path, out_dir: Optional[Path], weights: Optional[str],
         mean: Optional[str], validation_split: Optional[Path], tta: Tuple[str, ...], no_calibration: bool,
         clip_pool: str, batch_size: Optional[int], workers: Optional[int], device: str, modality: Optional[str], progress: bool, verbose: int) -> None:
    """Score a --checkpoint (or an ensemble of several) on every one-second segment of FEATURES_SPLIT_DIR.

    Writes predictions.tsv (the task's output format) and, for a split with labels,
    metrics.json, confusion_matrix.png and calibration.png (a reliability diagram); prints
    segment and clip scores, and the log loss with and without calibration.

    Each checkpoint's temperature (fitted on its run's validation locations) is applied unless
    --no-calibration; an ensemble averages its members' calibrated probabilities. An ensemble's
    members are also scored on their validation locations of the training split (--validation-split):
    --weights auto fits the weights there, and a warning says when the ensemble is worse there
    than its best member.

    Example: avsc-eval --checkpoint runs/demo/joint/best.pt data/demo-features/evaluate
    """
    setup_logging(verbose)
    from avsc_pipeline.evaluation.evaluate import evaluate_model
    from avsc_pipeline.evaluation.tta import parse_tta

    if out_dir is not None:  # the default folder is made before scoring too, once the model is known
        output_folder(out_dir, "--out")
    try:
        check = ensemble_check(list(checkpoints), split_dir, validation_split, weights, mean, device, modality,
                               batch_size, workers, progress)
        result = evaluate_model(list(checkpoints), split_dir, out_dir=out_dir, batch_size=batch_size, device=device,
                                modality=modality, progress=progress, workers=workers,
                                calibrated=not no_calibration, weights=check[0], mean=mean, tta=parse_tta(tta),
                                clip_pool=clip_pool, ensemble_validation=check[1])
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
    if result["ensemble"]:
        click.echo(members_line(result))
        if result.get("ensemble_validation"):
            click.echo(validation_line(result["ensemble_validation"]))
    if result.get("selected_on_scored_split"):
        click.echo(f"{result['split']}: {SELECTED_NOTE}")
    click.echo(headline_tables(result))
    click.echo(calibration_line(result))
    if result.get("calibration"):
        click.echo(f"training's calibration: {result['calibration']['reason']}")
    click.echo(f"wrote {', '.join(p.name for p in result['files'].values())} in {folder}")


SELECTED_NOTE = ("selected on the scored split: best.pt was chosen on this split (train.validation), so its "
                 "figures are not held out")


def members_line(result: Dict[str, Any]) -> str:
    """`ensemble (arithmetic mean) of 2: runs/a/best.pt x 0.5 (T 1.2), ...`."""
    parts = [f"{m['checkpoint']} x {m['weight']:.3g} (T {m['temperature']:.3g})" for m in result["members"]]
    return f"ensemble ({result['mean']} mean) of {len(parts)}: " + ", ".join(parts)


def ensemble_check(checkpoints: List[Path], split_dir: Path, validation_split: Optional[Path], weights: Optional[str],
                   mean: Optional[str], device: str, modality: Optional[str], batch_size: Optional[int],
                   workers: Optional[int], progress: bool) -> Tuple[Optional[Tuple[float, ...]], Optional[Dict[str, Any]]]:
    """The weights to score with and the ensemble's validation figures (None for one checkpoint,
    or where the validation split is missing and the weights are not `auto`)."""
    import logging

    from avsc_pipeline.evaluation.ensemble import is_ensemble_file
    from avsc_pipeline.evaluation.ensemble_weights import check_ensemble, parse_weights_option
    from avsc_pipeline.storage.index import INDEX_NAME

    auto, given = parse_weights_option(weights)
    if not (len(checkpoints) > 1 or is_ensemble_file(checkpoints[0])):
        if auto:
            raise ValueError("--weights auto: expected several --checkpoint values (an ensemble), got one")
        return given, None
    train_dir = validation_split or split_dir.resolve().parent / "train"
    if not auto and not (train_dir / INDEX_NAME).is_file():
        logging.getLogger(__name__).info("%s: no training split there, so the ensemble is not checked on its "
                                         "validation locations (--validation-split names one)", train_dir)
        return given, None
    if auto and not train_dir.is_dir():
        raise FileNotFoundError(f"--weights auto: expected the members' training split at {train_dir} (their "
                                "validation locations fit the weights), got no such folder; give --validation-split")
    check = check_ensemble(checkpoints, train_dir, given, mean, fit=auto, device=device, modality=modality,
                           batch_size=batch_size, workers=workers, progress=progress)
    if auto and Path(check.split_dir) == split_dir.resolve():
        logging.getLogger(__name__).warning("%s: the weights were fitted on the split scored (the runs select on it, "
                                            "train.validation): its figures are not held out", split_dir)
    return (check.weights if auto else given), check.to_dict()


def validation_line(check: Dict[str, Any]) -> str:
    """`validation (240 rows of 6 locations, fitted weights): ensemble log loss 0.210, members 0.290, 1.100`."""
    members = ", ".join(f"{loss:.3f}" for loss in check["member_log_loss"])
    how = "fitted weights" if check["fitted"] else "weights as given"
    line = (f"validation ({check['n_rows']} rows of {check['n_locations']} locations, {how}): ensemble log loss "
            f"{check['ensemble_log_loss']:.3f}, members {members}")
    return line + ("; worse than its best member (see the warning)" if check.get("warning") else "")


def calibration_line(result: Dict[str, Any]) -> str:
    """Segment log loss and ECE, as scored and without any temperature."""
    how = f"calibrated (T = {result['temperature']:.3g})" if result["calibrated"] else "--no-calibration"
    tta = f"; TTA over {'+'.join(result['tta'])}" if result["tta"] else ""
    return (f"log loss {result['log_loss']:.3f} {how}, {result['log_loss_uncalibrated']:.3f} uncalibrated; "
            f"ECE {100 * result['ece']:.1f} % ({100 * result['ece_uncalibrated']:.1f} % uncalibrated){tta}")


def headline_tables(result: Dict[str, Any]) -> str:
    """Segment scores, then clip scores (segment probabilities pooled per clip)."""
    header = ["", "n", "accuracy", "log loss", "macro accuracy", "class-mean log loss"]
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
