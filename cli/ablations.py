"""`avsc-ablations`: one of the paper's Tables 1-3 (or Table 4, beyond the paper: PANNs' CNN14 and CLIP),
trained, scored and tabled beside the paper's (Table 4: the later literature's) figures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import click

from avsc_pipeline_cli.common import Command, config_option, device_option, output_folder, set_option, setup_logging


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("table", type=click.IntRange(1, 4))
@click.argument("features_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--rows", help="Comma-separated row names (default: every row of the table; see "
                             "configs/ablations/tables.yaml).")
@config_option("YAML files layered on top of every row (e.g. configs/demo.yaml for small, fast models).",
               multiple=True)
@set_option
@device_option
@click.option("--plan", is_flag=True, help="Train nothing: list each step (audio steps, rows) with its epochs, rows "
                                           "per epoch and the wall time estimated from a short timed probe on DEVICE; "
                                           "writes no checkpoint.")
@click.option("--probe-steps", type=click.IntRange(1), default=None, help="Timed training steps of each --plan probe "
                                                                          "(default 8).")
@click.option("--per-device", type=click.IntRange(1), default=1, show_default=True,
              help="Train K runs at once on every visible GPU (K processes on the CPU), each its own seeded process: "
                   "the same table as one at a time, sooner on a GPU the paper's batch leaves idle.")
@click.option("--progress/--no-progress", default=False, show_default=True, help="Progress bars.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(table: int, features_dir: Path, run_dir: Path, rows: Optional[str], config_path: Tuple[Path, ...],
         overrides: Tuple[str, ...], device: str, plan: bool, probe_steps: Optional[int], per_device: int,
         progress: bool, verbose: int) -> None:
    """Train the audio steps TABLE needs once, then each of its rows, score them on
    FEATURES_DIR/evaluate and write RUN_DIR/table-TABLE.md and .csv beside the paper's figures.

    A finished row is kept on a rerun and a stopped one resumes.

    Example: avsc-ablations 3 data/demo-features runs/demo-ablations --config configs/demo.yaml

    How long it will take first: the same command with --plan.
    """
    setup_logging(max(verbose, 1))
    output_folder(run_dir, "RUN_DIR", create=False)  # made by the first row that trains
    from avsc_pipeline.ablations import plan_table, run_table
    from avsc_pipeline.models.checkpoint import CheckpointError

    names = [name.strip() for name in rows.split(",") if name.strip()] if rows else None
    try:
        if plan:
            click.echo(plan_table(table, features_dir, run_dir, names, list(config_path), list(overrides), device,
                                  probe_steps))
            return
        run_table(table, features_dir, run_dir, names, list(config_path), list(overrides), device, progress,
                  per_device)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        raise click.ClickException(str(err)) from None
    click.echo((run_dir / f"table-{table}.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
