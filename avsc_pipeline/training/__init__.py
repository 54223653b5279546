"""Stage two: training the paper's models from the shards.

Modules:
    config: :class:`TrainConfig` (the `train:` YAML section).
    losses: cross-entropy against soft (mixup) targets.
    tensorboard: live curves in `RUN_DIR/tensorboard` (`train.tensorboard: true`).

Nothing is imported here, so `import avsc_pipeline.training` stays cheap.
"""
