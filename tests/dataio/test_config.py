"""Stage-two input settings: YAML round trip and refused values."""

from __future__ import annotations

import pytest

from avsc_pipeline.config import dump_yaml
from avsc_pipeline.sections.loading import BatchAugmentConfig, LoaderConfig
from avsc_pipeline.sections import load_section


def test_configs_round_trip_through_yaml(tmp_path):
    augment = BatchAugmentConfig(mixup_alpha=0.3, video_kernels="batched")
    loader = LoaderConfig(num_workers=4, aug_fraction=0.5)
    dump_yaml({"batch_augment": augment, "loader": loader}, tmp_path / "c.yaml")
    assert load_section(tmp_path / "c.yaml", "batch_augment", BatchAugmentConfig) == augment
    assert load_section(tmp_path / "c.yaml", "loader", LoaderConfig) == loader
    with pytest.raises(ValueError, match="expected video_ops within"):
        BatchAugmentConfig(video_ops=("Mirror",))
    with pytest.raises(ValueError, match="expected 0 <= video_magnitude < 31"):
        BatchAugmentConfig(video_magnitude=31)
    with pytest.raises(ValueError, match="expected aug_fraction within"):
        LoaderConfig(aug_fraction=1.5)


def test_audio_normalize_defaults_to_none_whatever_else_a_section_lists():
    from avsc_pipeline.config import from_dict, to_dict

    assert LoaderConfig().audio_normalize == "none"
    standardize = LoaderConfig(audio_normalize="standardize")
    assert to_dict(standardize)["audio_normalize"] == "standardize"  # every field is written
    full = {k: v for k, v in to_dict(LoaderConfig()).items() if k != "audio_normalize"}
    assert from_dict(LoaderConfig, full).audio_normalize == "none"  # no earlier definition is guessed
    assert from_dict(LoaderConfig, {"batch_size": 8}).audio_normalize == "none"  # a config file's section
    with pytest.raises(ValueError, match="expected audio_normalize in"):
        LoaderConfig(audio_normalize="minmax")
