"""`python -m avsc_pipeline_cli.torchrun ARGS`: torchrun, ending in one line when it is stopped.

On SIGTERM or SIGINT (a scheduler's pre-emption, `scripts/slurm/train.sbatch`, Ctrl-C) torchrun
passes the signal on to its workers (each `avsc-train` finishes its step and writes last.pt),
waits for them, then raises its `SignalException`, which Python prints as a traceback. This runs
torchrun's own `main` and turns that exception into one line and the status a shell gives a
process stopped by a signal: 128 + the signal's number (143 for SIGTERM). torchrun waits for its
workers at most `--shutdown-timeout` seconds (or TORCH_ELASTIC_SHUTDOWN_TIMEOUT; 30 by default)
before it kills them: leave them the time a step and a checkpoint take.
"""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    """Run torchrun with `argv` (default: the command line)."""
    import click
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(sys.argv[1:] if argv is None else argv)
    except SignalException as err:
        click.echo(f"torchrun: stopped by {err.sigval.name}; its workers finished their step", err=True)
        sys.exit(128 + int(err.sigval))


if __name__ == "__main__":
    main()
