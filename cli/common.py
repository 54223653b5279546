"""What several commands share: logging set-up, config loading and common options."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import click

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


def load_config(config_path: "Optional[Path] | Sequence[Path]", overrides: Sequence[str] = (),
                only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Every section of the recipe from a file and `--set` values; errors become click errors."""
    from avsc_pipeline.recipe import load_sections

    try:
        return load_sections(config_path or None, overrides, only=only)
    except (ValueError, TypeError) as err:
        raise click.ClickException(str(err)) from err


def _interrupted(ctx: click.Context) -> None:
    click.echo(f"{ctx.command_path}: interrupted (Ctrl-C)", err=True)
    ctx.exit(130)


class Command(click.Command):
    """A command whose Ctrl-C ends it with one line and exit status 130, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _interrupted(ctx)


class Group(click.Group):
    """A command group whose Ctrl-C, in any subcommand, ends it as :class:`Command` does."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _interrupted(ctx)
