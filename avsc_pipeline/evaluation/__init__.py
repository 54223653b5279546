"""Evaluation: scores, the DCASE output file, scoring checkpoints, run reports and figures.

* :mod:`.metrics` — log loss (the DCASE 2021 Task 1b primary metric), accuracy, confusion
  matrix, per-class scores, clip pooling and expected calibration error, from numpy arrays.
* :mod:`.calibration` — temperature scaling (fit and apply one temperature), and the decision
  whether validation rows support one (leave one location out).
* :mod:`.predictions` — the tab-separated predictions file (one row per segment).
* :mod:`.runtime` — a model and its batch preparation on a device (:class:`Scorer`): the one
  path from raw batches to probabilities of training's validation, evaluation and prediction.
* :mod:`.evaluate` — score a checkpoint on a split of feature shards (`avsc-eval`), and
  :func:`~.evaluate.score_rows`, which validation calls too.
* :mod:`.predict` — score raw WAV/MP4 recordings through stage one's clip code (`avsc-predict`).
* :mod:`.ensemble` — several checkpoints as one model (:class:`~.ensemble.Ensemble`, the
  scorer's interface), and the ensemble file.
* :mod:`.ensemble_weights` — member weights fitted on the members' validation rows
  (`--weights auto`), and the check that an ensemble beats its best member.
* :mod:`.tta` — test-time augmentation (channel swap, mirrored frames) around any scorer.
* :mod:`.recalibrate` — fit a checkpoint's or an ensemble's temperature on a labeled split
  (`avsc-calibrate`).
* :mod:`.report` — compare evaluated runs (table, Markdown, CSV, bar chart).
* :mod:`.plots` — confusion matrix, per-class accuracy, reliability diagram and training-curve
  figures (matplotlib, imported only when a figure is drawn).

`metrics`, `calibration`, `predictions`, `report` and `plots` need only numpy (and scipy);
`runtime`, `evaluate`, `ensemble`, `tta`, `recalibrate` and `predict` use the models, the shard
reader and stage one's feature code, never the trainer.
"""
