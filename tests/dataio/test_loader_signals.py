"""Loader workers leave SIGINT and SIGTERM to the training process: a signal to the whole process
group (a scheduler's pre-emption, Ctrl-C) must not kill them before the training process has
finished its step and written last.pt. Only their parent's SIGTERM (the loader's own last-resort
`terminate()`) ends a worker."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess

import numpy as np
import pytest

from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.dataio.loader import make_loader
from avsc_pipeline.dataio.samplers import EpochSampler
from avsc_pipeline.sections.loading import LoaderConfig

pytestmark = pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="POSIX real-time signal calls (Linux)")


def _loader(small_pair, persistent: bool):
    dataset = ShardDataset([small_pair / "train"])
    sampler = EpochSampler(np.arange(len(dataset)), shuffle=False)
    config = LoaderConfig(batch_size=4, num_workers=2, prefetch_factor=2, drop_last=False,
                          persistent_workers=persistent)
    return dataset, make_loader(dataset, sampler, config, "cpu")


def _signal_from_another_process(pids, signum) -> None:
    """`kill -SIG pid ...` run as its own process: the sender is not the workers' parent."""
    subprocess.run(["kill", f"-{signal.Signals(signum).name[3:]}", *map(str, pids)], check=True)


def _workers():
    return [p for p in multiprocessing.active_children() if p.is_alive()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_workers_survive_a_signal_from_another_process_and_the_epoch_completes(small_pair, signum):
    dataset, loader = _loader(small_pair, persistent=False)
    seen = []
    for number, batch in enumerate(loader):
        if number == 0:
            workers = _workers()
            assert len(workers) == 2
            _signal_from_another_process([w.pid for w in workers], signum)
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(len(dataset)))  # every row arrived, each once
    assert all(w.exitcode == 0 for w in workers)  # shut down by the loader, not killed


def test_the_parents_sigterm_still_ends_a_worker_at_once(small_pair):
    _, loader = _loader(small_pair, persistent=True)
    iterator = iter(loader)
    next(iterator)
    worker = _workers()[0]
    worker.terminate()  # what the loader does to a worker that does not stop when told
    worker.join(timeout=60)
    assert worker.exitcode == 0  # torch's own handler exits quietly on its parent's SIGTERM too
    del iterator
