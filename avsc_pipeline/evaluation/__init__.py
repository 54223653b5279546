"""Evaluation: scores, the DCASE output file, scoring checkpoints, run reports and figures.

* :mod:`.metrics` — log loss (the DCASE 2021 Task 1b primary metric), accuracy, confusion
  matrix, per-class scores and clip aggregation, from numpy arrays.
* :mod:`.predictions` — the tab-separated predictions file (one row per segment).
* :mod:`.runtime` — a checkpoint's model and batch preparation on a device (:class:`Scorer`),
  shared by evaluation and prediction so that both give the same probabilities.
* :mod:`.evaluate` — score a checkpoint on a split of feature shards (`avsc-eval`).
* :mod:`.predict` — score raw WAV/MP4 recordings through stage one's clip code (`avsc-predict`).
* :mod:`.report` — compare evaluated runs (table, Markdown, CSV, bar chart).
* :mod:`.plots` — confusion matrix, per-class accuracy and training-curve figures (matplotlib,
  imported only when a figure is drawn).
* :mod:`.testing` — an untrained checkpoint for a shard folder, for tests and benchmarks.

`metrics`, `predictions`, `report` and `plots` need only numpy; `runtime`, `evaluate` and
`predict` use the models, the shard reader and stage one's feature code, never the trainer.
"""
