"""Features of the tiny TAU data set and untrained checkpoints for them, made once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.testing import write_test_checkpoint
from avsc_pipeline.features.extract import extract_split
from avsc_pipeline.corpus.tau import TAU_CLASSES, load_tau

# Small frames keep extraction and the video model fast; everything else is the recipe's.
FEATURES = FeatureConfig(image_size=32)


@pytest.fixture(scope="session")
def features(tau_root, tmp_path_factory) -> Dict[str, Path]:
    """`{"evaluate": folder, "test": folder}`: stage one on the tiny set (labels, and none)."""
    out = tmp_path_factory.mktemp("features")
    for split in ("evaluate", "test"):
        extract_split(load_tau(tau_root, split), out / split, FEATURES, list(TAU_CLASSES), progress=False)
    return {"evaluate": out / "evaluate", "test": out / "test"}


@pytest.fixture(scope="session")
def checkpoints(features, tmp_path_factory) -> Dict[str, Path]:
    """Untrained joint, audio and joint-without-embedding-means checkpoints, each in a run folder."""
    runs = tmp_path_factory.mktemp("runs")
    return {
        "joint": write_test_checkpoint(runs / "joint" / "best.pt", features["evaluate"], modality="joint", seed=1),
        "audio": write_test_checkpoint(runs / "audio" / "best.pt", features["evaluate"], modality="audio", seed=2),
        "no_means": write_test_checkpoint(runs / "no_means" / "best.pt", features["evaluate"], modality="joint",
                                          seed=3, embedding_means=False),
    }
