"""Calibration says when it starts: a temperature fitted with each location left out in turn can
take minutes on a large validation split, and the log must not go silent meanwhile."""

from __future__ import annotations

import logging

import numpy as np

from avsc_pipeline.evaluation.temperature import decide_temperature


def test_fitting_a_temperature_is_logged_before_it_starts(caplog):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 10)) * 4
    labels = rng.integers(0, 10, 300)
    locations = np.array([f"loc{i % 6}" for i in range(300)])
    caplog.set_level(logging.INFO, logger="avsc_pipeline")
    decide_temperature(logits, labels, locations, logits=True)
    starts = [r for r in caplog.records if "fitting the calibration temperature" in r.getMessage()]
    assert [r.getMessage() for r in starts] == [
        "fitting the calibration temperature on 300 rows of 6 locations, each location left out in turn..."]
    assert caplog.records.index(starts[0]) == 0  # before anything else is logged about it
