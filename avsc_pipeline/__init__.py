"""avsc-pipeline: audio-visual scene classification (USTC DCASE 2021 Task 1b recipe)."""

__version__ = "0.1.0"
