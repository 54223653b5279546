"""`avsc-train`: stage two, from feature shards to a trained model in a run folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import click

from avsc_pipeline_cli.common import Command, config_option, device_option, output_folder, set_option, setup_logging


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("features_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@config_option("YAML recipe (sections model, train, batch_augment, loader); defaults otherwise. With --resume "
               "and no --config, RUN_DIR/config.yaml.", multiple=True)
@set_option
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its last.pt (--set train.epochs=N "
                                              "extends a finished run).")
@click.option("--overwrite", is_flag=True, help="Replace a run that RUN_DIR holds.")
@click.option("--steps", default=None, metavar="STEP,STEP",
              help="Run the recipe's steps in order (e.g. audio,joint), each into RUN_DIR/<step> from the --config "
                   "files plus the packaged configs/steps/<step>.yaml: a finished step is kept, a stopped one "
                   "resumes, the joint step starts from RUN_DIR/audio/best.pt; everything is checked before the "
                   "first step trains.")
@click.option("--estimate", is_flag=True, help="Train nothing: estimate the run's (or each --steps step's) wall time "
                                               "from a short timed probe of its training step on DEVICE, with its "
                                               "epochs and rows per epoch; writes no checkpoint.")
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(features_dir: Path, run_dir: Path, config_path: Tuple[Path, ...], overrides: Tuple[str, ...], resume: bool,
         overwrite: bool, steps: Optional[str], estimate: bool, device: str, progress: bool, verbose: int) -> None:
    """Train one model of the recipe on FEATURES_DIR/train (+ train-aug) into RUN_DIR.

    Holds out 10% of each class's recording locations for validation, writes config.yaml,
    metrics.csv, curves.png, train.log, last.pt (every epoch, and on SIGINT/SIGTERM) and best.pt.
    The model's modality (audio, video or joint) is the config's model.modality.

    Example: avsc-train data/features runs/paper/audio --config configs/paper.yaml --config configs/steps/audio.yaml

    The whole recipe: avsc-train data/features runs/paper --config configs/paper.yaml --steps audio,joint
    """
    setup_logging(max(verbose, 1))
    output_folder(run_dir, "RUN_DIR", create=False)  # written once the inputs are checked
    if estimate:
        click.echo(_estimate(features_dir, run_dir, config_path, overrides, steps, device))
        return
    if steps is not None:
        if resume or overwrite:
            raise click.UsageError("--steps resumes stopped steps and keeps finished ones by itself; "
                                   "give neither --resume nor --overwrite")
        row = _run_steps(features_dir, run_dir, config_path, overrides, steps, device, progress)
    else:
        row = _train(features_dir, run_dir, config_path, overrides, resume, overwrite, device, progress)
    if "stopped_by" in row:
        again = "run the same command again" if steps is not None else "continue with --resume"
        click.echo(f"{run_dir}: stopped by signal {row['stopped_by']}; {again}", err=True)
        sys.exit(128 + int(row["stopped_by"]))
    if row and steps is None:
        _summary(run_dir, row)


def _summary(run_dir: Path, row: Dict[str, Any]) -> None:
    if row:
        best = row.get("best") or {}
        click.echo(f"{run_dir}: last epoch {row['epoch']}: validation accuracy {_pct(row.get('val_accuracy'))}, "
                   f"log loss {_num(row.get('val_log_loss'))}; best.pt (epoch {best.get('epoch', 'n/a')}): "
                   f"accuracy {_pct(best.get('val_accuracy'))}, log loss {_num(best.get('val_log_loss'))}")


def _run_steps(features_dir: Path, run_dir: Path, config_path: Tuple[Path, ...], overrides: Tuple[str, ...],
               steps: str, device: str, progress: bool) -> Dict[str, Any]:
    from avsc_pipeline.models.checkpoint import CheckpointError
    from avsc_pipeline.recipe import plan_steps, run_steps

    names = [name.strip() for name in steps.replace(" ", ",").split(",") if name.strip()]
    try:
        _refuse_feature_overrides(overrides)
        rows = run_steps(plan_steps(names, run_dir, list(config_path), overrides), features_dir, device, progress)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError) as err:
        raise click.ClickException(str(err)) from None
    for name, row in rows.items():
        if "stopped_by" not in row and not row.get("kept"):
            _summary(run_dir / name, row)
    return list(rows.values())[-1] if rows else {}


def _estimate(features_dir: Path, run_dir: Path, config_path: Tuple[Path, ...], overrides: Tuple[str, ...],
              steps: Optional[str], device: str) -> str:
    """The estimate of one run, or of each step of --steps (a finished step listed as kept)."""
    from avsc_pipeline.models.checkpoint import CheckpointError
    from avsc_pipeline.sections import merge_files, recipe_from_layers
    from avsc_pipeline.training.estimate import estimate_run, format_estimates

    try:
        _refuse_feature_overrides(overrides)
        if steps is None:
            raw, source = merge_files(list(config_path), overrides)
            recipe = recipe_from_layers(raw, source, overrides)
            return format_estimates([estimate_run(run_dir.name, features_dir, recipe, device,
                                                  raw.get("features") or None)])
        from avsc_pipeline.ablations import finished
        from avsc_pipeline.recipe import plan_steps, preflight

        names = [name.strip() for name in steps.replace(" ", ",").split(",") if name.strip()]
        planned = plan_steps(names, run_dir, list(config_path), overrides)
        preflight(planned, features_dir)
        kept = {step.name: "finished, kept" for step in planned if finished(step)}
        return format_estimates([estimate_run(step.name, features_dir, step.recipe, device, step.given_features)
                                 for step in planned if step.name not in kept], kept)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError) as err:
        raise click.ClickException(str(err)) from None


def _refuse_feature_overrides(overrides: Tuple[str, ...]) -> None:
    bad = [o for o in overrides if o.strip().startswith("features.")]
    if bad:
        raise ValueError(f"--set {bad[0]}: features come from the shards, not from training; re-extract them "
                         "with `avsc-features extract --config` to change the features")


def _train(features_dir: Path, run_dir: Path, config_path: Tuple[Path, ...], overrides: Tuple[str, ...],
           resume: bool, overwrite: bool, device: str, progress: bool) -> Dict[str, Any]:
    from avsc_pipeline.models.checkpoint import CheckpointError
    from avsc_pipeline.sections import merge_files, recipe_from_layers
    from avsc_pipeline.training.run import train_run
    from avsc_pipeline.training.run_dir import CONFIG_NAME

    try:
        paths = list(config_path)
        if resume and not paths and (run_dir / CONFIG_NAME).is_file():
            paths = [run_dir / CONFIG_NAME]
        _refuse_feature_overrides(overrides)
        raw, source = merge_files(paths, overrides)
        recipe = recipe_from_layers(raw, source, overrides)
        return train_run(features_dir, run_dir, recipe, given_features=raw.get("features") or None,
                         resume=resume, overwrite=overwrite, device=device, progress=progress)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError) as err:
        raise click.ClickException(str(err)) from None


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _num(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
