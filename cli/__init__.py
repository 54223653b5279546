"""Command-line entry points of avsc-pipeline, installed as `avsc_pipeline_cli`.

One click module per command: `features` (avsc-features); `common` holds logging set-up,
config loading and the options several commands share.
"""
