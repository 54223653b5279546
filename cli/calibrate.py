"""`avsc-calibrate`: fit a temperature on a labeled split; write a new checkpoint or ensemble file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import click

from avsc_pipeline_cli.common import (Command, checkpoints_option, device_option, ensemble_options, output_folder,
                                      setup_logging)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@checkpoints_option
@click.argument("split_dir", metavar="FEATURES_SPLIT_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The new file (never overwritten): a checkpoint (.pt) for one --checkpoint, an ensemble file "
                   "(.yaml) for several.")
@ensemble_options
@click.option("--validation", is_flag=True,
              help="Fit on the checkpoints' own validation locations of FEATURES_SPLIT_DIR only (give the train "
                   "split): the rows their training held out.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Segments per batch  [default: the run's]")
@click.option("--workers", type=click.IntRange(min=0), help="Loader worker processes  [default: the run's]")
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(checkpoints: Tuple[Path, ...], split_dir: Path, out_file: Path, weights: Optional[str], mean: Optional[str],
         validation: bool, batch_size: Optional[int], workers: Optional[int], device: str, progress: bool,
         verbose: int) -> None:
    """Fit the temperature that minimizes the log loss on the labeled segments of FEATURES_SPLIT_DIR.

    One checkpoint: its temperature is refitted on its raw probabilities and written into a
    copy of it (--out NEW.pt). Several checkpoints (or an ensemble file): the members keep
    their own temperatures and the ensemble's own is fitted on their combined probabilities,
    written as an ensemble file (--out NAME.yaml) that --checkpoint of avsc-eval and
    avsc-predict reads. Fit on a split other than the one you report.

    Example: avsc-calibrate --checkpoint runs/demo/audio-only/best.pt --checkpoint runs/demo/joint/best.pt
    data/demo-features/train --validation --out runs/demo/ensemble.yaml
    """
    setup_logging(verbose)
    output_folder(out_file.parent, "--out's folder")
    from avsc_pipeline.evaluation.ensemble import parse_weights
    from avsc_pipeline.evaluation.checkpoint_temperature import calibrate

    try:
        result = calibrate(list(checkpoints), split_dir, out_file, weights=parse_weights(weights), mean=mean,
                           validation=validation, device=device, batch_size=batch_size, workers=workers,
                           progress=progress)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"temperature {result.temperature:.4g} (was {result.previous:.4g}) fitted on {result.n_rows} segments "
               f"of {split_dir}: log loss {result.log_loss_uncalibrated:.4f} uncalibrated, "
               f"{result.log_loss_before:.4f} before, {result.log_loss_calibrated:.4f} after")
    click.echo(f"wrote {result.kind} {result.out}")


if __name__ == "__main__":
    main()
