import pytest

from avsc_pipeline.config import (
    FeatureConfig, config_diff, config_hash, dump_yaml, from_dict, load_section, to_dict,
)


def test_feature_config_defaults_match_the_recipe():
    cfg = FeatureConfig()
    assert cfg.audio_shape == (6, 128, 39)
    assert cfg.video_shape == (2, 3, 224, 224)
    assert cfg.frame_times == (0.0, 14.0 / 30.0)


def test_yaml_round_trip(tmp_path):
    cfg = FeatureConfig(n_mels=64, audio_dtype="float16", db_top=80.0)
    dump_yaml({"features": cfg}, tmp_path / "c.yaml")
    back = load_section(tmp_path / "c.yaml", "features", FeatureConfig)
    assert back == cfg
    assert config_hash(back) == config_hash(cfg)
    assert config_hash(FeatureConfig()) != config_hash(cfg)


def test_unknown_field_and_bad_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="n_melz"):
        from_dict(FeatureConfig, {"n_melz": 3})
    with pytest.raises(ValueError, match="audio_dtype"):
        FeatureConfig(audio_dtype="int8")
    (tmp_path / "bad.yaml").write_text("features: [1, 2]\n")
    with pytest.raises(TypeError, match="mapping"):
        load_section(tmp_path / "bad.yaml", "features", FeatureConfig)
    with pytest.raises(ValueError, match="not found"):
        load_section(tmp_path / "missing.yaml", "features", FeatureConfig)


def test_config_diff_names_fields():
    a, b = to_dict(FeatureConfig()), to_dict(FeatureConfig(n_mels=64))
    assert config_diff(a, b) == ["n_mels: 128 != 64"]


def test_shipped_configs_load():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    assert load_section(configs / "paper.yaml", "features", FeatureConfig) == FeatureConfig()
    assert load_section(configs / "demo.yaml", "features", FeatureConfig) == FeatureConfig()
    from avsc_pipeline.features.augment import OfflineAugmentConfig

    assert load_section(configs / "paper.yaml", "offline_augment", OfflineAugmentConfig) == OfflineAugmentConfig()
    from avsc_pipeline.training.config import AugmentConfig, LoaderConfig

    assert load_section(configs / "paper.yaml", "augment", AugmentConfig) == AugmentConfig()
    assert load_section(configs / "paper.yaml", "loader", LoaderConfig) == LoaderConfig()
