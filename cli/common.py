"""What several commands share: logging set-up, config loading and common options."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click

# `metrics` imports numpy only, so `--help` stays free of torch.
from avsc_pipeline.evaluation.metrics import CLIP_POOLS, ENSEMBLE_MEANS


def setup_logging(verbose: int, log_file: Optional[Path] = None) -> None:
    """Configure logging once, at the top of a command (group); optionally also into a file."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:  # also after a command group configured logging: a subcommand's own -v counts
        root = logging.getLogger()
        root.setLevel(min(root.level or level, level))
    logging.getLogger("avsc_pipeline").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def verbose_option(command: Callable) -> Callable:
    """`-v/--verbose`, counted (-vv for debug)."""
    return click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")(command)


def config_option(help_text: str, multiple: bool = False) -> Callable:
    """`--config YAML`, an existing file (repeatable where `multiple`: later files override)."""
    if multiple:
        help_text += " Repeatable: each later file overrides the keys it gives."
    return click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        multiple=multiple, help=help_text)


def set_option(command: Callable) -> Callable:
    """`--set section.key=value`, repeatable, values parsed as YAML."""
    return click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                        help="Override one config value (parsed as YAML); repeatable.")(command)


def device_option(command: Callable) -> Callable:
    """`--device auto|cpu|cuda|cuda:N`."""
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA when available), cpu, cuda or cuda:N.")(command)


def load_config(config_path: "Optional[Path] | Sequence[Path]", overrides: Sequence[str] = ()) -> Any:
    """The :class:`~avsc_pipeline.sections.Recipe` of config files and `--set` values (every
    file checked in full); errors become click errors."""
    from avsc_pipeline.sections import load_recipe

    try:
        return load_recipe(config_path or None, overrides)
    except (ValueError, TypeError) as err:
        raise click.ClickException(str(err)) from err


def output_folder(folder: Path, what: str = "output folder", create: bool = True) -> Path:
    """Make sure results can be written into `folder` before any work starts: a run must not
    fail at its last step, after hours, on a folder that is missing or read-only.

    Args:
        folder: the folder results go to.
        what: its name in the message (e.g. "--out's folder").
        create: create it (with its parents); False only checks that it could be created (for
            a folder that the command itself fills in order, e.g. a run folder).

    Raises:
        click.ClickException: one line: `folder` is a file, cannot be created, or is not writable.
    """
    import os

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise click.ClickException(f"{what} {folder}: expected a folder, got a file at {existing}")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise click.ClickException(f"{what} {folder}: cannot be created ({err.strerror or err})") from None
        existing = folder
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.ClickException(f"{what} {folder}: expected a writable folder, got {existing} without write "
                                   "permission")
    return folder


class _OneLineInterrupt:
    """Mixin for click commands: Ctrl-C (in the command or, for a group, any subcommand) ends it
    with one line and exit status 130, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except KeyboardInterrupt:
            click.echo(f"{ctx.command_path}: interrupted (Ctrl-C)", err=True)
            ctx.exit(130)


class Command(_OneLineInterrupt, click.Command):
    """A click command that ends on Ctrl-C with one line and status 130."""


class Group(_OneLineInterrupt, click.Group):
    """A click group that ends on Ctrl-C, in any subcommand, with one line and status 130."""


# ---- Options of the commands that score checkpoints (avsc-eval, avsc-predict, avsc-calibrate) ----


def checkpoints_option(command: Callable) -> Callable:
    """`--checkpoint CKPT`, repeatable: one checkpoint, several (an ensemble) or an ensemble file."""
    return click.option("--checkpoint", "checkpoints", required=True, multiple=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="A checkpoint (RUN_DIR/best.pt). Repeat it for an ensemble of several, or give one "
                             "ensemble file (.yaml, written by avsc-calibrate).")(command)


def ensemble_options(command: Optional[Callable] = None, *, auto: bool = False) -> Callable:
    """`--weights W,W,...` and `--mean arithmetic|geometric` of an ensemble; with `auto`
    (`@ensemble_options(auto=True)`), `--weights auto` too."""
    if command is None:
        return lambda wrapped: ensemble_options(wrapped, auto=auto)
    command = click.option("--mean", type=click.Choice(ENSEMBLE_MEANS), default=None,
                           help="How an ensemble combines its members' calibrated probabilities  "
                                "[default: arithmetic]")(command)
    fitted = (" or auto: the weights that minimize the log loss on the members' validation locations of "
              "--validation-split" if auto else "")
    return click.option("--weights", metavar="auto|W,W,..." if auto else "W,W,...", default=None,
                        help=f"One weight per --checkpoint, comma-separated (normalized to sum to 1){fitted}  "
                             "[default: equal]")(command)


def scoring_options(command: Callable) -> Callable:
    """`--tta`, `--no-calibration` and `--clip-pool` of avsc-eval and avsc-predict."""
    command = click.option("--clip-pool", type=click.Choice(CLIP_POOLS), default="mean-prob", show_default=True,
                           help="How a clip's segment probabilities are pooled: their mean, or the softmax of "
                                "their mean log-probability.")(command)
    command = click.option("--no-calibration", "no_calibration", is_flag=True,
                           help="Score the probabilities the models give, without the stored temperatures.")(command)
    return click.option("--tta", multiple=True, metavar="swap,flip",
                        help="Test-time augmentation, averaged over every combination: swap (left/right audio "
                             "channels), flip (frames mirrored); repeatable or comma-separated.")(command)
