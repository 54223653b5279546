"""The recipe: every section a YAML config file may hold, and the one way configs are loaded.

A config file is a mapping of sections, each read into its typed, frozen dataclass::

    features:          FeatureConfig         stage one (avsc-features extract)
    offline_augment:   OfflineAugmentConfig  offline audio augmentation (avsc-features augment)
    batch_augment:     BatchAugmentConfig    on-device batch augmentation in training
    loader:            LoaderConfig          reading shards in stage two
    model:             ModelConfig           extractors and fusion head
    train:             TrainConfig           the training run

An unknown section or key is an error that names the file, the section and the key; a missing
section takes its defaults. `--set section.key=value` overrides (values parsed as YAML) apply
on top of the file.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple, Type, TypeVar

from avsc_pipeline.config import from_dict, load_yaml

T = TypeVar("T")
PathLike = "str | os.PathLike[str]"


def section_classes() -> Dict[str, type]:
    """Every known section name and its dataclass, in the order a resolved config lists them."""
    # Imported here: the sections live with the code they configure, and some of those modules
    # are heavy; a caller that only reads `features:` should not import the trainer.
    from avsc_pipeline.features.config import FeatureConfig, OfflineAugmentConfig
    from avsc_pipeline.dataio.config import BatchAugmentConfig, LoaderConfig

    classes: Dict[str, type] = {
        "features": FeatureConfig,
        "offline_augment": OfflineAugmentConfig,
        "batch_augment": BatchAugmentConfig,
        "loader": LoaderConfig,
    }
    classes.update(_stage_two_sections())
    return classes


def _stage_two_sections() -> Dict[str, type]:
    from avsc_pipeline.models.config import ModelConfig
    from avsc_pipeline.training.config import TrainConfig

    return {"model": ModelConfig, "train": TrainConfig}


def check_sections(data: Dict[str, Any], source: str) -> None:
    """Refuse a mapping with a section name the recipe does not know.

    Raises:
        ValueError: naming `source`, the unknown section(s) and the known ones.
    """
    known = section_classes()
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; known sections: {list(known)}")


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


def merge_files(path: "Optional[PathLike] | Sequence[PathLike]" = None,
                overrides: Sequence[str] = ()) -> Tuple[Dict[str, Any], str]:
    """The raw sections that config files and `--set` overrides give, merged in order.

    Returns:
        `({section: {key: value}}, source)`, where `source` names the files for messages.

    Raises:
        ValueError: an unreadable file, an unknown section, or a malformed override.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    source = " + ".join(str(p) for p in paths) or "config"
    merged: Dict[str, Any] = {}
    for one in paths:
        data = load_yaml(one)
        check_sections(data, str(one))
        for name, values in data.items():
            if isinstance(values, dict) and isinstance(merged.get(name), dict):
                merged[name] = {**merged[name], **values}
            else:
                merged[name] = dict(values) if isinstance(values, dict) else values
    for text in overrides:
        section, key, value = parse_override(text)
        check_sections({section: None}, f"--set {text}")
        if not isinstance(merged.get(section) or {}, dict):
            raise ValueError(f"{source} [{section}]: expected a mapping, got {type(merged[section]).__name__}")
        merged[section] = dict(merged.get(section) or {}, **{key: value})
    return merged, source


def load_sections(path: "Optional[PathLike] | Sequence[PathLike]" = None, overrides: Sequence[str] = (),
                  only: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Read config files and overrides into one dataclass per section.

    Args:
        path: a YAML file of sections, several (each later file overrides the keys it gives,
            e.g. the recipe, then a stage, then an ablation), or None for the defaults.
        overrides: `section.key=value` strings applied on top of the file.
        only: the sections to build (default: all); the file is still checked in full.

    Returns:
        `{section name: dataclass instance}` in the recipe's order.

    Raises:
        ValueError: an unreadable file, an unknown section or key (file, section and key named),
            or an invalid value.
    """
    merged, source = merge_files(path, overrides)
    classes = section_classes()
    wanted = list(classes) if only is None else list(only)
    out = {}
    for name in wanted:
        if name not in classes:
            raise ValueError(f"expected a section in {list(classes)}, got {name!r}")
        label = f"{source} [{name}]" + (" with --set" if any(o.startswith(f"{name}.") for o in overrides) else "")
        values = merged.get(name)
        out[name] = from_dict(classes[name], {} if values is None else values, source=label, section=name)
    return out


def load_section(path: Optional[PathLike], section: str, cls: Optional[Type[T]] = None) -> T:
    """Read one section of a config file (defaults when `path` is None or the section absent).

    The whole file is checked: a misspelled section elsewhere is an error too.
    """
    value = load_sections(path, only=[section])[section]
    if cls is not None and not isinstance(value, cls):
        raise TypeError(f"expected section {section!r} to be read as {cls.__name__}, got {type(value).__name__}")
    return value



