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

:mod:`avsc_pipeline.recipe` knows every section and reads files; this module holds the
conversions (:func:`from_dict` rejects unknown keys) and the shared field validators.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

T = TypeVar("T")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass(frozen=True)
class FeatureConfig:
    """How stage one turns a clip into per-second audio features and video frame pairs.

    The defaults are the recipe's contract with stage two: a `(6, 128, 39)` float32 tensor per
    1-second segment (log-mel, delta, delta-delta of the left channel, then of the right) and the
    1st and 15th frame (at 30 fps) of each second resized to 224x224.
    """

    sample_rate: int = 48000
    segment_samples: int = 48000
    n_fft: int = 2048
    hop_length: int = 1200
    window: str = "hann"
    center: bool = False
    power: float = 2.0
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 24000.0
    htk: bool = False
    mel_norm: Optional[str] = "slaney"
    db_ref: float = 1.0
    db_amin: float = 1e-10
    db_top: Optional[float] = None
    delta_width: int = 9
    frame_times: Tuple[float, ...] = (0.0, 14.0 / 30.0)
    image_size: int = 224
    audio_dtype: str = "float32"

    def __post_init__(self) -> None:
        check_int(self, ("sample_rate", "segment_samples", "n_fft", "hop_length", "n_mels"), minimum=1)
        if self.segment_samples < self.n_fft:
            raise ValueError(
                f"expected segment_samples >= n_fft, got {self.segment_samples} < {self.n_fft}"
            )
        if self.audio_dtype not in ("float32", "float16"):
            raise ValueError(f"expected audio_dtype 'float32' or 'float16', got {self.audio_dtype!r}")
        if self.delta_width < 3 or self.delta_width % 2 == 0:
            raise ValueError(f"expected an odd delta_width >= 3, got {self.delta_width}")
        if not self.frame_times or any(t < 0 or t >= 1.0 for t in self.frame_times):
            raise ValueError(f"expected frame_times within [0, 1) s, got {self.frame_times}")
        if self.image_size < 1:
            raise ValueError(f"expected image_size >= 1, got {self.image_size}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"expected 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}"
            )

    @property
    def n_frames(self) -> int:
        """Number of STFT frames per segment (39 for the defaults, no padding)."""
        return 1 + (self.segment_samples - self.n_fft) // self.hop_length

    @property
    def audio_shape(self) -> Tuple[int, int, int]:
        """Shape of one segment's audio features, `(6, n_mels, n_frames)`."""
        return (6, self.n_mels, self.n_frames)

    @property
    def video_shape(self) -> Tuple[int, int, int, int]:
        """Shape of one segment's frames, `(len(frame_times), 3, image_size, image_size)`."""
        return (len(self.frame_times), 3, self.image_size, self.image_size)


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


def from_dict(cls: Type[T], data: Dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a mapping, coercing lists to tuples; unknown keys are an error.

    Args:
        cls: a config dataclass type.
        data: field values; missing fields take their defaults.
        source: where the mapping came from, named in error messages.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{source}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} field(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err


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

    data = {name: to_dict(cfg) for name, cfg in sections.items()}
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)
