"""The recipe's sections as typed, frozen dataclasses, and the one way config files are read.

A config file is a mapping of sections, each read into its dataclass::

    features:          FeatureConfig         stage one (avsc-features extract)
    offline_augment:   OfflineAugmentConfig  offline audio augmentation (avsc-features augment)
    batch_augment:     BatchAugmentConfig    on-device batch augmentation in training
    loader:            LoaderConfig          reading shards in stage two
    model:             ModelConfig           extractors and fusion head
    train:             TrainConfig           the training run

:class:`Recipe` holds one of each. :func:`load_recipe` reads config files (each later file
overrides the keys it gives) and `--set section.key=value` overrides into one Recipe. A missing
section or key takes today's default: a user's YAML means what it says and is never migrated.
Artifacts written by earlier versions (shards, checkpoints) are migrated by version where they
are read. An unknown section or key is an error naming the file, the section and the key.

This package sits on the bottom floor (it imports only :mod:`avsc_pipeline.config`,
:mod:`avsc_pipeline.devices` and storage's list of offline-augmentation variants), so every
layer, evaluation included, can read any section without importing the layer it configures.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from avsc_pipeline.config import from_dict, load_yaml, to_dict
from avsc_pipeline.sections.features import FeatureConfig, OfflineAugmentConfig
from avsc_pipeline.sections.loading import BatchAugmentConfig, LoaderConfig
from avsc_pipeline.sections.model import ModelConfig
from avsc_pipeline.sections.train import TrainConfig

PathLike = Union[str, "os.PathLike[str]"]

#: Every section name and its dataclass, in the order a resolved recipe lists them.
SECTIONS: Dict[str, type] = {
    "features": FeatureConfig,
    "offline_augment": OfflineAugmentConfig,
    "batch_augment": BatchAugmentConfig,
    "loader": LoaderConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


@dataclass(frozen=True)
class Recipe:
    """Every section of one run (or of a config file), typed.

    Attributes:
        features: stage one's feature definition; in a run's recipe, the shards' own.
        offline_augment: the offline augmentation; in a run's recipe, that of the `train-aug`
            shards the run read, or None when it read none.
        batch_augment: on-device batch augmentation.
        loader: reading shards in stage two.
        model: the extractors and fusion head.
        train: the training run.
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    offline_augment: Optional[OfflineAugmentConfig] = field(default_factory=OfflineAugmentConfig)
    batch_augment: BatchAugmentConfig = field(default_factory=BatchAugmentConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if value is None and name == "offline_augment":
                continue
            if not isinstance(value, cls):
                raise TypeError(f"expected Recipe.{name} to be a {cls.__name__}, got {type(value).__name__}")

    def to_dict(self) -> Dict[str, Any]:
        """`{section: {key: value}}`, JSON-safe; an absent `offline_augment` is left out."""
        return {name: to_dict(getattr(self, name)) for name in SECTIONS if getattr(self, name) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "recipe",
                  absent: Sequence[str] = ()) -> "Recipe":
        """Build a Recipe from `{section: {key: value}}`; missing sections and keys take their
        defaults, except the sections named in `absent`, which become None where missing.

        Raises:
            ValueError: an unknown section or key, or a value of the wrong type (named).
        """
        check_sections(data, source)
        values: Dict[str, Any] = {}
        for name, section_cls in SECTIONS.items():
            given = data.get(name)
            if given is None and name in absent:
                values[name] = None
                continue
            values[name] = from_dict(section_cls, dict(given or {}), source=f"{source} [{name}]", section=name)
        return cls(**values)

    def replace(self, **sections: Any) -> "Recipe":
        """A copy with the given sections replaced (`recipe.replace(train=new_train)`)."""
        return dataclasses.replace(self, **sections)


def check_sections(data: Mapping[str, Any], source: str) -> None:
    """Refuse a mapping with a section name the recipe does not know.

    Raises:
        ValueError: naming `source`, the unknown section(s) and the known ones.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; known sections: {list(SECTIONS)}")


def parse_override(text: str) -> Tuple[str, str, Any]:
    """`"section.key=value"` -> `(section, key, value)`, the value parsed as YAML.

    Example: `"train.lr=1e-4"` -> `("train", "lr", 0.0001)`; `"model.fusion_hidden=[256, 64]"`.
    """
    import yaml

    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"expected section.key=value, got {text!r}")
    name, raw = text.split("=", 1)
    section, _, key = name.strip().partition(".")
    if not section or not key or "." in key:
        raise ValueError(f"expected section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"--set {text!r}: value is not valid YAML ({err})") from None
    return section, key, value


def _paths(path: "Optional[PathLike] | Sequence[PathLike]") -> list:
    return [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)


def merge_files(path: "Optional[PathLike] | Sequence[PathLike]" = None,
                overrides: Sequence[str] = ()) -> Tuple[Dict[str, Any], str]:
    """The raw sections that config files and `--set` overrides give, merged in order.

    Returns:
        `({section: {key: value}}, source)`, where `source` names the files for messages.

    Raises:
        ValueError: an unreadable file, an unknown section, or a malformed override.
    """
    paths = _paths(path)
    source = " + ".join(str(p) for p in paths) or "config"
    merged: Dict[str, Any] = {}
    for one in paths:
        merge_layer(merged, load_yaml(one), str(one))
    apply_overrides(merged, overrides, source)
    return merged, source


def apply_overrides(merged: Dict[str, Any], overrides: Sequence[str], source: str = "config") -> Dict[str, Any]:
    """Apply `section.key=value` overrides to merged raw sections, in order (in place).

    Raises:
        ValueError: a malformed override, an unknown section, or a section that is not a mapping.
    """
    for text in overrides:
        section, key, value = parse_override(text)
        check_sections({section: None}, f"--set {text}")
        if not isinstance(merged.get(section) or {}, dict):
            raise ValueError(f"{source} [{section}]: expected a mapping, got {type(merged[section]).__name__}")
        merged[section] = dict(merged.get(section) or {}, **{key: value})
    return merged


def merge_layer(merged: Dict[str, Any], layer: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """Merge one layer of sections (a file's, or a table row's) into `merged`, key by key."""
    check_sections(layer, source)
    for name, values in layer.items():
        if isinstance(values, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **values}
        else:
            merged[name] = dict(values) if isinstance(values, dict) else values
    return merged


def recipe_from_layers(merged: Mapping[str, Any], source: str, overrides: Sequence[str] = ()) -> Recipe:
    """A Recipe from merged raw sections; `overrides` only mark which sections `--set` touched
    in error messages."""
    touched = {text.split(".", 1)[0].strip() for text in overrides}
    values = {}
    for name, cls in SECTIONS.items():
        label = f"{source} [{name}]" + (" with --set" if name in touched else "")
        given = merged.get(name)
        values[name] = from_dict(cls, {} if given is None else given, source=label, section=name)
    return Recipe(**values)


def load_recipe(path: "Optional[PathLike] | Sequence[PathLike]" = None, overrides: Sequence[str] = ()) -> Recipe:
    """Read config files and overrides into one :class:`Recipe`.

    Args:
        path: a YAML file of sections, several (each later file overrides the keys it gives,
            e.g. the recipe, then a step, then an ablation), or None for the defaults.
        overrides: `section.key=value` strings applied on top of the files.

    Raises:
        ValueError: an unreadable file, an unknown section or key (file, section and key named),
            or an invalid value.
    """
    merged, source = merge_files(path, overrides)
    return recipe_from_layers(merged, source, overrides)


def load_section(path: Optional[PathLike], section: str, cls: Optional[type] = None) -> Any:
    """One section of a config file (its defaults when `path` is None or the section absent);
    the whole file is checked, so a misspelled section elsewhere is an error too. With `cls`,
    the section must be read as that class."""
    if section not in SECTIONS:
        raise ValueError(f"expected a section in {list(SECTIONS)}, got {section!r}")
    value = getattr(load_recipe(path), section)
    if cls is not None and not isinstance(value, cls):
        raise TypeError(f"expected section {section!r} to be read as {cls.__name__}, got {type(value).__name__}")
    return value


__all__ = [
    "SECTIONS", "Recipe", "BatchAugmentConfig", "FeatureConfig", "LoaderConfig", "ModelConfig",
    "OfflineAugmentConfig", "TrainConfig", "apply_overrides", "check_sections", "load_recipe", "load_section",
    "merge_files", "merge_layer", "parse_override", "recipe_from_layers",
]
