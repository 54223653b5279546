"""`avsc-train`: stage two, from feature shards to a trained model in a run folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Tuple

import click

from avsc_pipeline_cli.common import config_option, device_option, load_config, set_option, setup_logging


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("features_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@config_option("YAML recipe (sections model, train, batch_augment, loader); defaults otherwise.", multiple=True)
@set_option
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its last.pt.")
@click.option("--overwrite", is_flag=True, help="Replace a run that RUN_DIR holds.")
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(features_dir: Path, run_dir: Path, config_path: Tuple[Path, ...], overrides: Tuple[str, ...], resume: bool,
         overwrite: bool, device: str, progress: bool, verbose: int) -> None:
    """Train one stage of the recipe on FEATURES_DIR/train (+ train-aug) into RUN_DIR.

    Holds out 10% of each class's recording locations for validation, writes config.yaml,
    metrics.csv, curves.png, train.log, last.pt (every epoch, and on SIGINT/SIGTERM) and best.pt.

    Example: avsc-train data/features runs/paper/audio --config configs/paper.yaml --config configs/stages/audio.yaml
    """
    setup_logging(max(verbose, 1))
    from avsc_pipeline.config import load_yaml
    from avsc_pipeline.models.checkpoint import CheckpointError
    from avsc_pipeline.training.run import train_run

    sections = load_config(config_path, overrides)
    given = {}
    for path in config_path:
        given.update(load_yaml(path).get("features") or {})
    try:
        row = train_run(features_dir, run_dir, sections, given_features=given, resume=resume, overwrite=overwrite,
                        device=device, progress=progress)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        raise click.ClickException(str(err)) from None
    if "stopped_by" in row:
        click.echo(f"{run_dir}: stopped by signal {row['stopped_by']}; resume with --resume", err=True)
        sys.exit(128 + int(row["stopped_by"]))
    if row:
        click.echo(f"{run_dir}: epoch {row['epoch']}: validation accuracy {_pct(row.get('val_accuracy'))}, "
                   f"log loss {_num(row.get('val_log_loss'))}")


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _num(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
