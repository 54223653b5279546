"""Typed, frozen configuration dataclasses that round-trip through YAML and JSON.

Every artifact (a shard's attributes, an index, a checkpoint) carries the resolved config that
made it, so a reader can refuse an artifact made with different settings and say which field
differs (:func:`config_diff`).

A YAML config file holds one mapping per section, e.g.::

    features:          # stage one (FeatureConfig)
      n_mels: 128
    offline_augment:   # avsc-features augment
      ops: [pitch, speed]
    batch_augment:     # on-device batch augmentation in stage two
      mixup_ratio: 0.4

:mod:`avsc_pipeline.sections` knows every section and reads files; this module holds the
conversions (:func:`from_dict` rejects unknown keys) and the shared field validators.

A mapping means what it says: a missing key takes today's default, whatever the other keys are.
Artifacts written by earlier versions (shards, checkpoints) are migrated by their readers, one
function per format version (`storage.shards`, `models.checkpoint`); a user's YAML never is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import typing
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

T = TypeVar("T")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_int(obj: Any, names: Sequence[str], minimum: int = 0) -> None:
    """Raise ValueError unless each named field of `obj` is an int (not a bool) >= `minimum`."""
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"expected {name} to be an int >= {minimum}, got {value!r}")


def check_unit(obj: Any, names: Sequence[str]) -> None:
    """Raise ValueError unless each named field of `obj` is a number within [0, 1]."""
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(f"expected {name} within [0, 1], got {value!r}")


def check_range(obj: Any, name: str, lowest: float, highest: float) -> None:
    """Raise ValueError unless the named field of `obj` is a pair `(low, high)` of numbers with
    `lowest <= low <= high <= highest`."""
    value = getattr(obj, name)
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"expected {name} to be a pair (low, high), got {value!r}")
    low, high = value
    if not lowest <= low <= high <= highest:
        raise ValueError(f"expected {name} with {lowest} <= low <= high <= {highest}, got {value!r}")


def check_choice(obj: Any, name: str, choices: Sequence[Any]) -> None:
    """Raise ValueError unless the named field of `obj` is one of `choices`."""
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"expected {name} in {tuple(choices)}, got {value!r}")


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain, JSON-safe dict of a config dataclass (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a config dataclass instance, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: Type[T], data: Dict[str, Any], source: str = "config", section: str = "") -> T:
    """Build `cls` from a mapping: lists become tuples, every value is checked against the
    field's type hint (bool, int, float, str, tuples, Optional), unknown keys are an error.

    Args:
        cls: a config dataclass type.
        data: field values; missing fields take their defaults.
        source: where the mapping came from, named in error messages.
        section: the section's name, so that a message names `section.key`.

    Raises:
        ValueError: "<source>: <section.key>: expected <type>, got <value>" and the like.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{source}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} field(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        value = _coerce(hints[name], value)
        problem = type_problem(hints[name], value)
        if problem:
            key = f"{section}.{name}" if section else name
            raise ValueError(f"{source}: {key}: {problem}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err


def type_problem(hint: Any, value: Any) -> Optional[str]:
    """Why `value` does not fit the type hint `hint` ("expected X, got Y"), or None when it does.

    Understands bool, int, float, str, `Optional[...]`, `Tuple[X, ...]` and `Tuple[X, Y]`;
    other hints are not checked.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = [type_problem(a, value) for a in options]
        if all(problems):
            return problems[0] if len(problems) == 1 else f"expected one of {_names(options)}, got {value!r}"
        return None
    if origin is tuple:
        if not isinstance(value, tuple):
            return f"expected a list, got {value!r}"
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return f"expected a list of {len(items)} values, got {list(value)!r}"
        for item_hint, item in zip(items, value):
            problem = type_problem(item_hint, item)
            if problem:
                return f"{problem} (in {list(value)!r})"
        return None
    if hint is bool and not isinstance(value, bool):
        return f"expected true or false, got {value!r}"
    if hint is int and (not isinstance(value, int) or isinstance(value, bool)):
        return f"expected an integer, got {value!r}"
    if hint is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return f"expected a number, got {value!r}"
    if hint is str and not isinstance(value, str):
        return f"expected a string, got {value!r}"
    return None


def _coerce(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is not None and len(args) == 1:
            return _coerce(args[0], value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        # YAML 1.1 reads `1e-5` (no dot) as a string; it is a number to every user.
        return float(value)
    return value


def _names(hints: Sequence[Any]) -> str:
    return ", ".join(getattr(h, "__name__", str(h)) for h in hints)


def config_hash(config: Any) -> str:
    """Short, stable hash of a config's resolved values (16 hex digits)."""
    blob = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_diff(expected: Dict[str, Any], actual: Dict[str, Any]) -> List[str]:
    """Human-readable list of the fields where two config dicts differ."""
    lines = []
    for key in sorted(set(expected) | set(actual)):
        a, b = expected.get(key, "<missing>"), actual.get(key, "<missing>")
        if a != b:
            lines.append(f"{key}: {a!r} != {b!r}")
    return lines


def load_yaml(path: "str | os.PathLike[str]") -> Dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a ValueError naming it."""
    import yaml

    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of sections, got {type(data).__name__}")
    return data


def dump_yaml(sections: Dict[str, Any], path: "str | os.PathLike[str]") -> None:
    """Write config dataclasses as a YAML file of sections, e.g. `{"features": FeatureConfig()}`."""
    import yaml

    data = {name: cfg if isinstance(cfg, dict) else to_dict(cfg) for name, cfg in sections.items()}
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
