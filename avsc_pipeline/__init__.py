"""avsc-pipeline: audio-visual scene classification (USTC DCASE 2021 Task 1b recipe).

Packages and modules; imports run one way (config, atomic, corpus, storage -> features, dataio ->
models -> training, evaluation), except that the recipe reaches each section's dataclass:

- :mod:`.config`: typed config dataclasses <-> YAML and the shared field validators;
  :mod:`.recipe`: every section of a config file, unknown ones refused.
- :mod:`.atomic`: the one atomic file write (a temporary file beside the target, fsync, rename).
- :mod:`.corpus`: the data sets themselves: TAU layout and generic CSV -> `Clip` records, class
  lists; downloading and unpacking the TAU packages.
- :mod:`.storage`: the shard schema, atomic writer, column reader, row reads, index, verify.
- :mod:`.features`: stage one: audio features, video frames, offline augmentation, extraction
  and the shard-writing engine they share.
- :mod:`.dataio`: stage two's input: dataset, samplers, statistics, loader, batch preparation
  and batch (on-device) augmentation.
- :mod:`.models`: audio FCNN, video backbones, fusion head, checkpoints (no shards).
- :mod:`.training`: the trainer, losses, optimizers and schedules, run folders.
- :mod:`.evaluation`: metrics, evaluation of checkpoints on shards, prediction, reports.
- :mod:`.demo`: the generated teaching data set; :mod:`.testing`: data builders for tests
  and benchmarks.

The command line lives in the top-level `cli/` folder, installed as `avsc_pipeline_cli`.
Nothing is imported here, so `import avsc_pipeline` stays cheap.
"""

__version__ = "0.1.0"
