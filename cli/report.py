"""`avsc-report`: several evaluated runs side by side (table, Markdown, CSV, bar chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import click

from avsc_pipeline_cli.common import Command, output_folder, setup_logging


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", metavar="RUN_OR_EVAL_DIR...", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("report"),
              show_default=True, help="Folder for report.md, report.csv and per_class_accuracy.png.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(paths: Tuple[Path, ...], out_dir: Path, verbose: int) -> None:
    """Compare runs: accuracy, log loss and per-class accuracy of each, in the paper's table form.

    Each argument is a run folder (its eval/evaluate/metrics.json, else every eval/<split>/),
    an evaluation folder written by avsc-eval, or a metrics.json file.

    Example: avsc-report runs/demo/audio-only runs/demo/video-only runs/demo/joint --out runs/demo/report
    """
    setup_logging(verbose)
    output_folder(out_dir, "--out", create=False)  # made by write_report once the runs are read
    from avsc_pipeline.evaluation.report import write_report

    try:
        report = write_report(list(paths), out_dir)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(report.table)
    click.echo(f"wrote {', '.join(str(p) for p in report.files.values())}")


if __name__ == "__main__":
    main()
