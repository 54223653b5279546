import pytest

from avsc_pipeline.config import config_diff, config_hash, dump_yaml, from_dict, to_dict
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.sections import load_recipe, load_section, parse_override


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
    from avsc_pipeline.sections.features import OfflineAugmentConfig

    assert load_section(configs / "paper.yaml", "offline_augment", OfflineAugmentConfig) == OfflineAugmentConfig()
    from avsc_pipeline.sections.loading import BatchAugmentConfig, LoaderConfig

    assert load_section(configs / "paper.yaml", "batch_augment", BatchAugmentConfig) == BatchAugmentConfig()
    assert load_section(configs / "paper.yaml", "loader", LoaderConfig) == LoaderConfig()


def test_unknown_section_is_named_with_the_file_and_the_known_ones(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("loadr:\n  batch_size: 8\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown section\(s\) \['loadr'\]; known sections: .*'loader'"):
        load_section(path, "features", FeatureConfig)


def test_unknown_key_is_named_with_the_file_and_section(tmp_path):
    path = tmp_path / "key.yaml"
    path.write_text("loader:\n  batch_sise: 8\n")
    with pytest.raises(ValueError, match=r"key.yaml \[loader\]: unknown LoaderConfig field\(s\) \['batch_sise'\]"):
        load_recipe(path)


def test_set_overrides_are_parsed_as_yaml_and_checked(tmp_path):
    assert parse_override("train.lr=0.5") == ("train", "lr", 0.5)
    assert load_recipe(None, ["train.lr=1e-4"]).train.lr == 1e-4  # YAML 1.1 reads 1e-4 as text
    assert parse_override("model.fusion_hidden=[256, 64]") == ("model", "fusion_hidden", [256, 64])
    assert parse_override("model.video_weights=null") == ("model", "video_weights", None)
    recipe = load_recipe(None, ["loader.batch_size=8", "model.fusion_hidden=[256, 64]"])
    assert recipe.loader.batch_size == 8 and recipe.model.fusion_hidden == (256, 64)
    for bad, message in [("loader.batch_sise=8", "batch_sise"), ("loadr.batch_size=8", "unknown section"),
                         ("loader=8", "expected section.key=value"), ("loader.batch_size=[", "not valid YAML")]:
        with pytest.raises(ValueError, match=message):
            load_recipe(None, [bad])


# -- a section means what it says ------------------------------------------------------------


def test_a_features_section_of_three_keys_extracts_the_default_definition(tmp_path):
    """Missing keys take today's defaults, whichever keys are present: no earlier definition is
    guessed from the keys a mapping lists."""
    import numpy as np

    from avsc_pipeline.features.audio import reference_features

    path = tmp_path / "three.yaml"
    path.write_text("features:\n  n_mels: 128\n  hop_length: 1024\n  n_fft: 2048\n")
    config = load_section(path, "features")
    assert config == FeatureConfig()
    segments = np.random.default_rng(0).standard_normal((2, 2, 48000)).astype(np.float32) * 0.1
    assert np.array_equal(reference_features(segments, config), reference_features(segments, FeatureConfig()))


def test_a_full_section_without_the_newer_keys_takes_todays_defaults():
    """The old trap: a mapping listing every field except the newer ones was read under the earlier
    definition (dB, librosa deltas, ...)."""
    newer = ("pad_mode", "log", "log_offset", "scaling", "delta")
    data = {k: v for k, v in to_dict(FeatureConfig()).items() if k not in newer}
    assert from_dict(FeatureConfig, data) == FeatureConfig()
    del data["window"]
    assert from_dict(FeatureConfig, data) == FeatureConfig()


def test_to_dict_writes_every_field():
    cfg = FeatureConfig(pad_mode="constant", log="db", scaling="none", delta="librosa")
    assert set(to_dict(cfg)) == {f for f in FeatureConfig.__dataclass_fields__}


def test_recipe_round_trips_and_refuses_wrong_section_types():
    from avsc_pipeline.sections import Recipe

    recipe = load_recipe(None, ["train.epochs=3", "model.modality=audio"])
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict({"model": {}}, absent=("offline_augment",)).offline_augment is None
    with pytest.raises(TypeError, match="Recipe.train"):
        Recipe(train=recipe.model)


def test_format_2_checkpoint_sections_are_migrated_on_purpose(tmp_path):
    """A format-2 checkpoint left the newer keys out when they held the earlier values: its
    reader restores them (one function for that version); format 3 writes every key."""
    import torch

    from avsc_pipeline.models.checkpoint import FORMAT_VERSION, ModelArtifact, load_checkpoint, save_checkpoint

    path = tmp_path / "c.pt"
    recipe = load_recipe(None, ["model.modality=audio"])
    save_checkpoint(path, ModelArtifact(weights={"w": torch.zeros(1)}, classes=["a", "b"], config=recipe.to_dict()))
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == FORMAT_VERSION == 3
    newer = ("pad_mode", "log", "log_offset", "scaling", "delta")
    state["format_version"] = 2
    state["artifact"]["config"]["features"] = {k: v for k, v in state["artifact"]["config"]["features"].items()
                                               if k not in newer}
    torch.save(state, path)
    migrated = load_checkpoint(path).artifact.recipe.features
    assert (migrated.pad_mode, migrated.log, migrated.scaling, migrated.delta) == ("constant", "db", "none", "librosa")
