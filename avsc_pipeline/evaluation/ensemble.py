"""Ensembles: several checkpoints scored as one model, from one pass over the inputs.

:class:`Ensemble` has the :class:`~avsc_pipeline.evaluation.scoring.Scorer`'s interface
(`probabilities(batch)`, `probability_pair(batch)`, `eval_mode()`, `classes`, `with_video`, ...),
so :func:`~.scoring.score_rows` and :func:`~.recordings.predict_files` take either. Each batch is
read once (with frames when any member uses them) and handed to every member; each member's
calibrated probabilities (its checkpoint's temperature) are combined by a weighted mean,

* `arithmetic` (the default): `p = sum_m w_m p_m`;
* `geometric`: `p = softmax(sum_m w_m log p_m)`,

and the ensemble's own temperature, when one was fitted (`avsc-calibrate` with several
checkpoints), rescales the result: `softmax(log p / T)`. Weights are normalized to sum to 1.
Members must share the class list and the feature config; :func:`check_compatible` refuses
others, naming both files and the differing fields.

The ensemble file. `avsc-calibrate --checkpoint A --checkpoint B SPLIT --out ens.yaml` writes a
YAML file with one `ensemble:` section (:class:`EnsembleSpec`)::

    ensemble:
      checkpoints: [../audio-only/best.pt, ../joint/best.pt]   # relative to this file's folder
      weights: [0.5, 0.5]
      mean: arithmetic
      temperature: 1.084                                      # fitted on `fitted_on`
      member_temperatures: [1.31, 1.12]                        # the members' own, when fitted
      fitted_on: /data/demo-features/train (validation locations)
      fitted_rows: 240

`--checkpoint ens.yaml` (alone) scores that ensemble with its weights, mean and temperature.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from avsc_pipeline.config import config_diff, from_dict, load_yaml, to_dict
from avsc_pipeline.atomic import write_text_atomic
from avsc_pipeline.evaluation.metrics import ENSEMBLE_MEANS
from avsc_pipeline.evaluation.scoring import Scorer

logger = logging.getLogger(__name__)

#: How member probabilities are combined.
#: File name endings that mark an ensemble file given to `--checkpoint`.
ENSEMBLE_SUFFIXES = (".yaml", ".yml")
ENSEMBLE_SECTION = "ensemble"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class EnsembleSpec:
    """An ensemble file's contents (see the module docstring).

    Attributes:
        checkpoints: the member checkpoints (relative paths are relative to the file's folder).
        weights: one weight per member (normalized when used); empty for equal weights.
        mean: `arithmetic` or `geometric` (:data:`ENSEMBLE_MEANS`).
        temperature: the ensemble's own temperature (1.0: none).
        member_temperatures: the members' own temperatures when the ensemble's was fitted
            (a member recalibrated since makes the ensemble's stale: a warning says so).
        fitted_on: the labeled rows the temperature was fitted on, for the record.
        fitted_rows: how many rows that was.
    """

    checkpoints: Tuple[str, ...]
    weights: Tuple[float, ...] = ()
    mean: str = "arithmetic"
    temperature: float = 1.0
    member_temperatures: Tuple[float, ...] = ()
    fitted_on: str = ""
    fitted_rows: int = 0

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ValueError("expected at least one checkpoint in the ensemble, got none")
        if self.weights:
            normalized_weights(self.weights, len(self.checkpoints), "weights")
        if self.mean not in ENSEMBLE_MEANS:
            raise ValueError(f"expected mean in {ENSEMBLE_MEANS}, got {self.mean!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"expected a temperature > 0, got {self.temperature!r}")
        if self.member_temperatures and len(self.member_temperatures) != len(self.checkpoints):
            raise ValueError(f"expected {len(self.checkpoints)} member_temperatures, got "
                             f"{len(self.member_temperatures)}")


def normalized_weights(weights: Optional[Sequence[float]], count: int, option: str = "--weights") -> Tuple[float, ...]:
    """`count` weights scaled to sum to 1 (equal weights for None).

    Raises:
        ValueError: a list of another length, or weights that are negative, not finite or
            all zero (naming `option`).
    """
    if weights is None or len(weights) == 0:
        return (1.0 / count,) * count
    values = tuple(float(w) for w in weights)
    if len(values) != count:
        raise ValueError(f"{option}: expected {count} weights, one per checkpoint, got {len(values)} "
                         f"({','.join(f'{w:g}' for w in values)})")
    if not all(math.isfinite(w) and w >= 0 for w in values) or sum(values) <= 0:
        raise ValueError(f"{option}: expected non-negative weights with a positive sum, got "
                         f"{','.join(f'{w:g}' for w in values)}")
    total = sum(values)
    return tuple(w / total for w in values)


def parse_weights(text: Optional[str]) -> Optional[Tuple[float, ...]]:
    """`--weights 0.5,0.3,0.2` as numbers (None when not given); :func:`normalized_weights`
    checks them against the checkpoints when the ensemble is loaded.

    Raises:
        ValueError: not a comma-separated list of numbers (naming `--weights`).
    """
    if text is None:
        return None
    try:
        return tuple(float(part) for part in str(text).split(","))
    except ValueError:
        raise ValueError(f"--weights: expected comma-separated numbers, e.g. 0.5,0.5, got {text!r}") from None


def is_ensemble_file(path: PathLike) -> bool:
    """Whether a `--checkpoint` value names an ensemble file (by its ending, :data:`ENSEMBLE_SUFFIXES`)."""
    return Path(path).suffix.lower() in ENSEMBLE_SUFFIXES


def read_ensemble_file(path: PathLike) -> EnsembleSpec:
    """Read an ensemble file, its member paths made absolute (relative to the file's folder).

    Raises:
        ValueError: a missing or malformed file, or one without an `ensemble:` section (naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: ensemble file not found")
    data = load_yaml(path)
    if set(data) != {ENSEMBLE_SECTION}:
        raise ValueError(f"{path}: expected an ensemble file with one '{ENSEMBLE_SECTION}:' section, got "
                         f"sections {sorted(data)}")
    spec = from_dict(EnsembleSpec, data[ENSEMBLE_SECTION], source=str(path), section=ENSEMBLE_SECTION)
    folder = path.resolve().parent
    members = tuple(str(Path(c) if Path(c).is_absolute() else (folder / c).resolve()) for c in spec.checkpoints)
    return EnsembleSpec(members, spec.weights, spec.mean, spec.temperature, spec.member_temperatures,
                        spec.fitted_on, spec.fitted_rows)


def write_ensemble_file(path: PathLike, spec: EnsembleSpec) -> Path:
    """Write an ensemble file atomically, member paths relative to its folder where they can be.

    Raises:
        FileExistsError: `path` exists (an ensemble file is never overwritten).
    """
    import yaml

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"--out {path}: already exists (avsc-calibrate never overwrites a file)")
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.resolve().parent
    relative = []
    for member in spec.checkpoints:
        try:
            relative.append(os.path.relpath(Path(member).resolve(), folder))
        except ValueError:  # another drive (Windows): keep it absolute
            relative.append(str(Path(member).resolve()))
    data = to_dict(EnsembleSpec(tuple(relative), spec.weights, spec.mean, spec.temperature,
                                spec.member_temperatures, spec.fitted_on, spec.fitted_rows))
    write_text_atomic(path, yaml.safe_dump({ENSEMBLE_SECTION: data}, sort_keys=False))
    return path


def check_compatible(members: Sequence[Scorer], sources: Sequence[str]) -> None:
    """Refuse members that cannot be averaged: another class list, feature config or device.

    Raises:
        ValueError: "<first> and <other>: expected the same <what>, got ..." naming the fields.
    """
    first, first_source = members[0], sources[0]
    for member, source in zip(members[1:], sources[1:]):
        where = f"{first_source} and {source}"
        if list(member.classes) != list(first.classes):
            diff = [f"classes[{i}]: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(first.classes, member.classes))
                    if a != b]
            if len(member.classes) != len(first.classes):
                diff.append(f"len(classes): {len(first.classes)} != {len(member.classes)}")
            raise ValueError(f"{where}: expected the same class list, got different {'; '.join(diff)}")
        diff = config_diff(to_dict(first.feature_config), to_dict(member.feature_config))
        if diff:
            raise ValueError(f"{where}: expected the same feature config, got different "
                             f"{'; '.join('features.' + line for line in diff)}")
        if member.device != first.device:
            raise ValueError(f"{where}: expected members on one device, got {first.device} and {member.device}")


class Ensemble:
    """Several scorers as one model: weighted mean of their calibrated probabilities.

    Args:
        members: the member scorers (each applies its own temperature unless loaded uncalibrated).
        sources: one name per member (its checkpoint path), for messages and metrics.
        weights: one weight per member (normalized); None for equal weights.
        mean: `arithmetic` or `geometric`.
        temperature: the ensemble's own temperature, applied after combining (1.0: none).

    Raises:
        ValueError: no members, mismatched lengths, bad weights, mean or temperature, or
            members that :func:`check_compatible` refuses.
    """

    def __init__(self, members: Sequence[Scorer], sources: Sequence[str], weights: Optional[Sequence[float]] = None,
                 mean: str = "arithmetic", temperature: float = 1.0) -> None:
        if not members:
            raise ValueError("expected at least one member checkpoint, got none")
        if len(sources) != len(members):
            raise ValueError(f"expected {len(members)} sources, one per member, got {len(sources)}")
        if mean not in ENSEMBLE_MEANS:
            raise ValueError(f"--mean: expected one of {', '.join(ENSEMBLE_MEANS)}, got {mean!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"expected an ensemble temperature > 0, got {temperature!r}")
        check_compatible(members, [str(s) for s in sources])
        self.members = list(members)
        self.sources = [str(s) for s in sources]
        self.weights = normalized_weights(weights, len(members))
        self.mean = mean
        self.temperature = float(temperature)

    @property
    def classes(self) -> List[str]:
        """The C class names shared by the members."""
        return self.members[0].classes

    @property
    def feature_config(self) -> Any:
        """The stage-one config shared by the members."""
        return self.members[0].feature_config

    @property
    def with_video(self) -> bool:
        """Whether scoring reads frames: when any member uses them."""
        return any(m.with_video for m in self.members)

    @property
    def device(self) -> torch.device:
        """Where every member scores."""
        return self.members[0].device

    @property
    def transforms(self) -> Tuple[str, ...]:
        """No test-time transforms (a :class:`~.tta.TTAScorer` around the ensemble adds them)."""
        return ()

    @property
    def modality(self) -> str:
        """What the members score, e.g. `joint` or `audio+joint`."""
        kinds = sorted({m.modality for m in self.members})
        return "+".join(kinds)

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator["Ensemble"]:
        """Every member in eval mode for the block, as it was afterwards."""
        with contextlib.ExitStack() as stack:
            for member in self.members:
                stack.enter_context(member.eval_mode())
            yield self

    def combine(self, log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Members' log-probabilities `M x (B, C)` float64 -> the ensemble's `(B, C)`
        log-probabilities before its temperature (the weighted arithmetic or geometric mean)."""
        stacked = torch.stack(list(log_probs))
        weights = torch.tensor(self.weights, dtype=stacked.dtype).view(-1, 1, 1)
        if self.mean == "geometric":
            return torch.log_softmax((weights * stacked).sum(dim=0), dim=1)
        # log(sum_m w_m p_m) without leaving log space: exact where one member's probability
        # underflows float64.
        return torch.logsumexp(stacked + torch.log(weights), dim=0)

    def log_probability_pair(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """`(calibrated, uncalibrated)` log-probabilities `(B, C)` float64 on the CPU: each member
        runs once on the batch; calibrated combines the members' calibrated probabilities and
        applies the ensemble's temperature, uncalibrated combines their raw ones."""
        pairs = [member.log_probability_pair(batch) for member in self.members]
        calibrated = self.combine([p[0] for p in pairs])
        if self.temperature != 1.0:
            calibrated = torch.log_softmax(calibrated / self.temperature, dim=1)
        return calibrated, self.combine([p[1] for p in pairs])

    def probability_pair(self, batch: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        """`(calibrated, uncalibrated)` probabilities, each `(B, C)` float64 on the CPU."""
        calibrated, uncalibrated = self.log_probability_pair(batch)
        return calibrated.exp(), uncalibrated.exp()

    def probabilities(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The ensemble's class probabilities of one raw batch: `(B, C)` float64 on the CPU."""
        return self.probability_pair(batch)[0]
