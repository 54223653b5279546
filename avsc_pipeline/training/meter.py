"""Timing of a training epoch: samples per second and the share of time spent waiting for data."""

from __future__ import annotations

import time
from typing import Dict


class EpochMeter:
    """Counts samples and data-wait time on the host (no device tensors, no synchronization).

    Use :meth:`fetching` around taking the next batch and :meth:`add` after each step.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.samples = 0
        self.waited = 0.0
        self._fetch_started = 0.0

    def fetching(self) -> None:
        """A batch is about to be taken from the loader."""
        self._fetch_started = time.perf_counter()

    def fetched(self) -> None:
        """The batch arrived: the time since :meth:`fetching` was data wait."""
        self.waited += time.perf_counter() - self._fetch_started

    def add(self, samples: int) -> None:
        """`samples` more samples were trained."""
        self.samples += samples

    @property
    def elapsed(self) -> float:
        """Seconds since the meter started."""
        return max(time.perf_counter() - self.started, 1e-9)

    @property
    def samples_per_s(self) -> float:
        """This process's samples per second so far."""
        return self.samples / self.elapsed

    def summary(self, total_samples: float) -> Dict[str, float]:
        """`samples_per_s` (of `total_samples`, e.g. summed over processes), `data_wait_fraction`
        and `seconds`."""
        elapsed = self.elapsed
        return {"samples_per_s": total_samples / elapsed, "data_wait_fraction": self.waited / elapsed,
                "seconds": elapsed}
