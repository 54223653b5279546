"""Evaluation: scores, the DCASE output file, scoring checkpoints, run reports and figures.

* :mod:`.metrics` — log loss (the DCASE 2021 Task 1b primary metric), accuracy, confusion
  matrix, per-class scores, clip pooling and expected calibration error, from numpy arrays.
* :mod:`.temperature` — temperature scaling (fit and apply one temperature), and the decision
  whether validation rows support one (leave one location out).
* :mod:`.output_file` — the tab-separated predictions file (one row per segment).
* :mod:`.scoring` — a model ready to score on a device (:class:`~.scoring.Scorer`, on the one
  forward path of :mod:`avsc_pipeline.inference`), the interface every scorer shares
  (:class:`~.scoring.ScorerLike`), and :func:`~.scoring.score_rows`, which training's validation
  and `avsc-eval` both call.
* :mod:`.loading` — what `--checkpoint` names, loaded: one checkpoint (`load_scorer`), several
  as an ensemble, an ensemble file, with test-time augmentation (`load_model`, `LoadedModel`).
* :mod:`.evaluate` — score a checkpoint on a split of feature shards (`avsc-eval`).
* :mod:`.recordings` — score raw WAV/MP4 recordings through stage one's clip code (`avsc-predict`).
* :mod:`.ensemble` — several checkpoints as one model (:class:`~.ensemble.Ensemble`, the
  scorer's interface), and the ensemble file.
* :mod:`.ensemble_weights` — member weights fitted on the members' validation rows
  (`--weights auto`), and the check that an ensemble beats its best member.
* :mod:`.tta` — test-time augmentation (channel swap, mirrored frames) around any scorer.
* :mod:`.checkpoint_temperature` — refit a checkpoint's or an ensemble's temperature on a
  labeled split (`avsc-calibrate`).
* :mod:`.report` — compare evaluated runs (table, Markdown, CSV, bar chart).
* :mod:`.plots` — confusion matrix, per-class accuracy, reliability diagram and training-curve
  figures (matplotlib, imported only when a figure is drawn).

`metrics`, `temperature`, `output_file`, `report` and `plots` need only numpy (and scipy);
`scoring`, `loading`, `evaluate`, `ensemble`, `tta`, `checkpoint_temperature` and `recordings`
use the models, the shard reader and stage one's feature code, never the trainer. The trainer
imports `scoring` and `temperature` only, not ensembles or test-time augmentation.
"""
