"""The DCASE 2021 Task 1b output file: one row of class probabilities per one-second segment.

A predictions file is tab-separated UTF-8 text. Its header is `filename`, `scene_label`, then
one column per class in class order; each following row holds one segment's file name, its
most probable class and its probabilities::

    filename<TAB>scene_label<TAB>airport<TAB>bus<TAB>...
    audio/airport-lisbon-1000-40000.wav<TAB>airport<TAB>0.912<TAB>0.004<TAB>...

Segment file names. The TAU 2021 evaluation set is cut into one-second clips, each its own file,
so a one-second clip's row carries the audio file's name exactly as given (relative names stay
relative). A longer clip scored as several one-second segments gets one row per segment, named
`<stem>-<segment>.wav` in the same folder with `<segment>` counted from 0: segment 3 of
`audio/airport-lisbon-1000-40000.wav` is `audio/airport-lisbon-1000-40000-3.wav`
(:func:`segment_filename`).

Probabilities are written with 9 significant digits for float32 and lower precision (exact
round trip through :func:`read_predictions` and a cast back to float32) and 17 for float64.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import numpy as np

from avsc_pipeline.atomic import atomic_open

_FIXED_COLUMNS = ("filename", "scene_label")


def segment_filename(audio_filename: str, segment: int, n_segments: int) -> str:
    """The name of one segment's row in a predictions file (see the module docstring).

    Args:
        audio_filename: the clip's audio file name, e.g. `audio/airport-lisbon-1000-40000.wav`.
        segment: 0-based segment index, `0 <= segment < n_segments`.
        n_segments: the number of segments the clip was cut into.

    Returns:
        `audio_filename` unchanged when `n_segments == 1`, else `<folder>/<stem>-<segment>.wav`.
    """
    for name, value in (("segment", segment), ("n_segments", n_segments)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"expected an integer {name}, got {type(value).__name__}")
    if n_segments < 1 or not 0 <= segment < n_segments:
        raise ValueError(f"expected 0 <= segment < n_segments with n_segments >= 1, got {segment} of {n_segments}")
    if not isinstance(audio_filename, str) or not audio_filename:
        raise ValueError(f"expected a non-empty file name string, got {audio_filename!r}")
    if n_segments == 1:
        return audio_filename
    folder, sep, base = audio_filename.rpartition("/")
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return f"{folder}{sep}{stem}-{int(segment)}.wav"


def _format_row(values: np.ndarray, digits: int) -> str:
    return "\t".join(f"{v:.{digits}g}" for v in values.tolist())


def _check_field(value: str, what: str) -> str:
    if not value or any(ch in value for ch in "\t\r\n"):
        raise ValueError(f"expected a non-empty {what} without tabs or line breaks, got {value!r}")
    return value


def write_predictions(
    path: "str | os.PathLike[str]", filenames: Sequence[str], probs: Any, classes: Sequence[str]
) -> Path:
    """Write a predictions file atomically (a temporary file renamed when complete).

    Args:
        path: the file to write.
        filenames: N segment file names (see :func:`segment_filename`).
        probs: `(N, C)` float probabilities, columns in `classes` order.
        classes: the C class names.

    Returns:
        `path` as a Path.

    Raises:
        ValueError: mismatched lengths, a non-finite probability, a name holding a tab or line
            break, or repeated class names.
    """
    probs = np.asarray(probs)
    if probs.dtype.kind != "f":
        raise TypeError(f"expected floating probabilities, got dtype {probs.dtype}")
    classes = [_check_field(str(name), "class name") for name in classes]
    if len(set(classes)) != len(classes) or set(classes) & set(_FIXED_COLUMNS):
        raise ValueError(f"expected distinct class names other than {_FIXED_COLUMNS}, got {classes}")
    if probs.ndim != 2 or probs.shape != (len(filenames), len(classes)):
        raise ValueError(f"expected probabilities of shape ({len(filenames)}, {len(classes)}), got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("expected finite probabilities, got NaN or inf")
    digits = 17 if probs.dtype.itemsize > 4 else 9
    best = np.argmax(probs, axis=1) if probs.shape[0] else np.zeros(0, dtype=np.int64)
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\t".join(_FIXED_COLUMNS + tuple(classes)) + "\n")
        for name, row, index in zip(filenames, probs, best):
            name = _check_field(str(name), "file name")
            handle.write(f"{name}\t{classes[index]}\t{_format_row(row, digits)}\n")
    return path


def _parse_header(path: Path, line: str) -> List[str]:
    fields = line.rstrip("\r\n").split("\t")
    if tuple(fields[:2]) != _FIXED_COLUMNS or len(fields) < 4:
        raise ValueError(
            f"{path}:1: expected a header 'filename<TAB>scene_label<TAB><class>...' with at least 2 classes, "
            f"got {line.rstrip()!r}"
        )
    classes = fields[2:]
    if len(set(classes)) != len(classes) or not all(classes):
        raise ValueError(f"{path}:1: expected distinct non-empty class names, got {classes}")
    return classes


def _parse_row(path: Path, number: int, line: str, classes: List[str]) -> Tuple[str, str, List[float]]:
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != len(classes) + 2:
        raise ValueError(f"{path}:{number}: expected {len(classes) + 2} tab-separated fields, got {len(fields)}")
    name, label = fields[0], fields[1]
    if not name:
        raise ValueError(f"{path}:{number}: expected a file name, got an empty field")
    if label not in classes:
        raise ValueError(f"{path}:{number}: expected a scene_label among {classes}, got {label!r}")
    try:
        values = [float(text) for text in fields[2:]]
    except ValueError as err:
        raise ValueError(f"{path}:{number}: expected numeric probabilities, got {fields[2:]}") from err
    if not all(np.isfinite(values)):
        raise ValueError(f"{path}:{number}: expected finite probabilities, got {fields[2:]}")
    return name, label, values


def read_predictions(path: "str | os.PathLike[str]") -> Tuple[List[str], List[str], np.ndarray, List[str]]:
    """Read a predictions file written by :func:`write_predictions` (or any file of that format).

    Args:
        path: the tab-separated predictions file.

    Returns:
        `(filenames, scene_labels, probs, classes)`: N file names, N predicted class names,
        `(N, C)` float64 probabilities (cast to float32 to recover float32 values exactly) and
        the C class names from the header.

    Raises:
        ValueError: an empty file, a bad header, or a malformed row (the message gives
            `file:line`).
    """
    path = Path(path)
    filenames: List[str] = []
    labels: List[str] = []
    rows: List[List[float]] = []
    with open(path, "r", encoding="utf-8", newline="") as handle:
        header = handle.readline()
        if not header.strip():
            raise ValueError(f"{path}:1: expected a header line, got an empty file")
        classes = _parse_header(path, header)
        for number, line in enumerate(handle, start=2):
            if not line.strip():
                continue
            name, label, values = _parse_row(path, number, line, classes)
            filenames.append(name)
            labels.append(label)
            rows.append(values)
    probs = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(classes))
    return filenames, labels, probs, classes
