"""Evaluation: scores, the DCASE output file, run reports and figures.

* :mod:`.metrics` — log loss (the DCASE 2021 Task 1b primary metric), accuracy, confusion
  matrix, per-class scores and clip aggregation, from numpy arrays.
* :mod:`.predictions` — the tab-separated predictions file (one row per segment).
* :mod:`.report` — compare evaluated runs (table, Markdown, CSV, bar chart).
* :mod:`.plots` — confusion matrix, per-class accuracy and training-curve figures (matplotlib,
  imported only when a figure is drawn).

Nothing here imports torch; scoring a model's outputs needs only numpy.
"""
