"""Evaluation: scores, the DCASE output file, scoring checkpoints, run reports and figures.

* :mod:`.metrics` — log loss (the DCASE 2021 Task 1b primary metric), accuracy, confusion
  matrix, per-class scores and clip aggregation, from numpy arrays.
* :mod:`.predictions` — the tab-separated predictions file (one row per segment).
* :mod:`.runtime` — a model and its batch preparation on a device (:class:`Scorer`): the one
  path from raw batches to probabilities of training's validation, evaluation and prediction.
* :mod:`.evaluate` — score a checkpoint on a split of feature shards (`avsc-eval`), and
  :func:`~.evaluate.score_rows`, which validation calls too.
* :mod:`.predict` — score raw WAV/MP4 recordings through stage one's clip code (`avsc-predict`).
* :mod:`.report` — compare evaluated runs (table, Markdown, CSV, bar chart).
* :mod:`.plots` — confusion matrix, per-class accuracy and training-curve figures (matplotlib,
  imported only when a figure is drawn).

`metrics`, `predictions`, `report` and `plots` need only numpy; `runtime`, `evaluate` and
`predict` use the models, the shard reader and stage one's feature code, never the trainer.
"""
