"""Data set manifests: the TAU Urban Audio-Visual Scenes 2021 layout and a generic CSV.

Both produce a list of :class:`Clip` records; extraction never guesses paths beyond these.
:func:`write_tsv` writes lists in the TAU format (for the demo and test data sets).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

TAU_CLASSES: Tuple[str, ...] = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)
TAU_SPLITS = ("train", "evaluate", "test", "all")
# Headers of the TAU lists: meta.csv, fold1_train/evaluate.csv, fold1_test.csv.
META_HEADER: Tuple[str, ...] = ("filename_audio", "filename_video", "scene_label", "identifier")
FOLD_HEADER: Tuple[str, ...] = ("filename_audio", "filename_video", "scene_label")
TEST_HEADER: Tuple[str, ...] = ("filename_audio", "filename_video")


@dataclass(frozen=True)
class Clip:
    """One recording: an audio file, its video (if any), its label (if known) and location.

    Attributes:
        clip_id: the audio file's stem, unique within a manifest.
        audio: path of the WAV file.
        video: path of the MP4 file, or None for audio-only data.
        label: scene label, or None where unknown (e.g. the test list).
        identifier: recording location (e.g. `barcelona-161`), used for location-disjoint splits.
        source: where the record came from (`file:line`), named in error messages.
    """

    clip_id: str
    audio: Path
    video: Optional[Path]
    label: Optional[str]
    identifier: str
    source: str = ""


def identifier_from_name(stem: str) -> str:
    """Location identifier from a TAU file stem `<scene>-<city>-<location>-<segment>`.

    Returns `<city>-<location>`, or the whole stem when it does not have that shape.
    """
    parts = stem.split("-")
    if len(parts) >= 4:
        return f"{parts[-3]}-{parts[-2]}"
    return stem


def _read_tsv(path: Path, required: Sequence[str], delimiter: str = "\t") -> List[Tuple[int, dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    # utf-8-sig: a list saved by a spreadsheet program may start with a byte-order mark.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: expected columns {list(required)}, missing {missing} (header {header})")
        return [(reader.line_num, row) for row in reader]


def write_tsv(path: "str | os.PathLike[str]", header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    """Write a tab-separated list as the TAU set has them, atomically (through `.NAME.partial`).

    The parent folder is created when missing; returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def _check_unique(clips: Iterable[Clip]) -> None:
    seen: Dict[str, str] = {}
    for clip in clips:
        if clip.clip_id in seen:
            raise ValueError(
                f"{clip.source}: duplicate clip id {clip.clip_id!r} (also at {seen[clip.clip_id]})"
            )
        seen[clip.clip_id] = clip.source


def load_tau(root: "str | os.PathLike[str]", split: str = "all") -> List[Clip]:
    """Clips of one split of a data set in the TAU Urban Audio-Visual Scenes 2021 layout.

    Args:
        root: folder holding `meta.csv`, `evaluation_setup/`, `audio/` and `video/`.
        split: `train`, `evaluate`, `test` (fold1 lists) or `all` (meta.csv).

    Raises:
        FileNotFoundError: the manifest file is missing.
        ValueError: an unknown split, a malformed file, a label outside the 10 TAU classes.
    """
    root = Path(root)
    if split not in TAU_SPLITS:
        raise ValueError(f"expected split in {TAU_SPLITS}, got {split!r}")
    meta_path = root / "meta.csv"
    meta: Dict[str, dict] = {}
    if meta_path.is_file():
        meta = {row["filename_audio"]: row for _, row in _read_tsv(meta_path, ["filename_audio"])}
    if split == "all":
        path, rows = meta_path, _read_tsv(meta_path, FOLD_HEADER)
    else:
        path = root / "evaluation_setup" / f"fold1_{split}.csv"
        rows = _read_tsv(path, ["filename_audio"])
    clips = []
    for line, row in rows:
        source = f"{path}:{line}"
        label = (row.get("scene_label") or "").strip() or None
        if label is not None and label not in TAU_CLASSES:
            raise ValueError(f"{source}: unknown scene label {label!r}; expected one of {list(TAU_CLASSES)}")
        audio = row["filename_audio"].strip()
        video = (row.get("filename_video") or meta.get(audio, {}).get("filename_video") or "").strip()
        stem = Path(audio).stem
        identifier = (row.get("identifier") or meta.get(audio, {}).get("identifier") or "").strip()
        clips.append(
            Clip(
                clip_id=stem,
                audio=root / audio,
                video=root / video if video else None,
                label=label,
                identifier=identifier or identifier_from_name(stem),
                source=source,
            )
        )
    _check_unique(clips)
    return clips


def load_csv(path: "str | os.PathLike[str]", split: Optional[str] = None) -> List[Clip]:
    """Clips from a generic CSV with columns `audio`, optional `video`, `label`, `group`, `id`
    and `split`.

    Comma- or tab-separated (sniffed from the header), with or without a byte-order mark.
    Relative paths resolve against the CSV's folder; `group` (recording location or session)
    defaults to the identifier derived from the file name; `id` (the clip id) defaults to the
    audio file's stem, so that `dog/001.wav` and `cat/001.wav` can coexist when ids are given.
    With a `split` column (e.g. train/evaluate/test), `split` selects its rows (`all` or None:
    every row); without one, every row is read. Rows with an empty label are read as unlabeled
    (a warning gives their count and the first files): they are kept out of training and
    validation and can still be predicted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    with open(path, encoding="utf-8-sig") as handle:
        header = handle.readline()
    delimiter = "\t" if "\t" in header else ","
    base = path.parent
    clips = []
    rows = _read_tsv(path, ["audio"], delimiter=delimiter)
    has_split = bool(rows) and "split" in rows[0][1]
    for line, row in rows:
        source = f"{path}:{line}"
        if has_split and split not in (None, "all") and (row.get("split") or "").strip() != split:
            continue
        audio = (row.get("audio") or "").strip()
        if not audio:
            raise ValueError(f"{source}: empty 'audio' field")
        video = (row.get("video") or "").strip()
        stem = Path(audio).stem
        clips.append(
            Clip(
                clip_id=(row.get("id") or "").strip() or stem,
                audio=base / audio,
                video=base / video if video else None,
                label=(row.get("label") or "").strip() or None,
                identifier=(row.get("group") or "").strip() or identifier_from_name(stem),
                source=source,
            )
        )
    if has_split and split not in (None, "all") and not clips:
        found = sorted({(row.get("split") or "").strip() for _, row in rows})
        raise ValueError(f"{path}: no rows of split {split!r}; its split column holds {found}")
    _check_unique(clips)
    unlabeled = [c for c in clips if c.label is None]
    if unlabeled and len(unlabeled) < len(clips):
        logger.warning("%s: %d rows without a label (e.g. %s): extracted unlabeled, kept out of training and "
                       "validation", path, len(unlabeled), ", ".join(str(c.audio.name) for c in unlabeled[:3]))
    return clips


def has_split_column(path: "str | os.PathLike[str]") -> bool:
    """Whether a CSV manifest has a `split` column."""
    with open(path, encoding="utf-8-sig") as handle:
        header = handle.readline()
    delimiter = "\t" if "\t" in header else ","
    return "split" in [name.strip() for name in header.rstrip("\r\n").split(delimiter)]


def load_manifest(dataset: "str | os.PathLike[str]", split: str = "all") -> List[Clip]:
    """A TAU-layout folder (with `split`) or a generic CSV file (`split` selects the rows of its
    `split` column when it has one)."""
    dataset = Path(dataset)
    if dataset.is_dir():
        return load_tau(dataset, split)
    if dataset.suffix.lower() in (".csv", ".tsv"):
        return load_csv(dataset, split)
    raise FileNotFoundError(
        f"{dataset}: expected a TAU-layout data set folder or a CSV manifest, found neither"
    )


def resolve_classes(clips: Sequence[Clip], classes: Optional[Sequence[str]] = None) -> List[str]:
    """The class list for a manifest, checking every label against it.

    Args:
        clips: the manifest.
        classes: an explicit list; by default the 10 TAU scenes when every label is one of them,
            otherwise the data set's own sorted labels.

    Raises:
        ValueError: a label not in the list, naming the manifest row.
    """
    if classes is None:
        labels = {c.label for c in clips if c.label is not None}
        classes = list(TAU_CLASSES) if labels <= set(TAU_CLASSES) else sorted(labels)
    classes = list(classes)
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"expected a non-empty list of distinct classes, got {classes}")
    known = set(classes)
    for clip in clips:
        if clip.label is not None and clip.label not in known:
            raise ValueError(f"{clip.source}: label {clip.label!r} is not in the class list {classes}")
    return classes


def label_index(clip: Clip, classes: Sequence[str]) -> int:
    """Integer label of a clip in `classes`, or -1 when unknown."""
    return -1 if clip.label is None else list(classes).index(clip.label)
