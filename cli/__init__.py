"""Command-line entry points of avsc-pipeline (one click module per command group)."""

import logging


def setup_logging(verbose: int) -> None:
    """Configure logging once, at the top of a command group."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("avsc_pipeline").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
