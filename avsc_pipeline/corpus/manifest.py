"""Data set manifests: a TAU-layout folder or a generic CSV, read into clip records.

Both give a list of :class:`~avsc_pipeline.corpus.clips.Clip` records; extraction never guesses
paths beyond these. :func:`load_manifest` takes either; :func:`resolve_classes` fixes a class list.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence

from avsc_pipeline.corpus.clips import Clip, check_unique, read_table
from avsc_pipeline.corpus.tau import TAU_CLASSES, identifier_from_name, load_tau

logger = logging.getLogger(__name__)


def load_csv(path: "str | os.PathLike[str]", split: Optional[str] = None) -> List[Clip]:
    """Clips from a generic CSV with columns `audio`, optional `video`, `label`, `group`, `id`
    and `split`.

    Comma- or tab-separated (sniffed from the header), with or without a byte-order mark.
    Relative paths resolve against the CSV's folder (each clip's `audio_file` and `video_file`
    keep them as written); `group` (recording location or session) defaults to the identifier
    derived from the file name; `id` (the clip id) defaults to the audio file's stem, so that
    `dog/001.wav` and `cat/001.wav` can coexist when ids are given.
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
    rows = read_table(path, ["audio"], delimiter=delimiter)
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
                audio_file=audio,
                video_file=video,
            )
        )
    if has_split and split not in (None, "all") and not clips:
        found = sorted({(row.get("split") or "").strip() for _, row in rows})
        raise ValueError(f"{path}: no rows of split {split!r}; its split column holds {found}")
    check_unique(clips)
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


def resolve_classes(clips: Sequence[Clip], classes: Optional[Sequence[str]] = None,
                    dataset: "str | os.PathLike[str] | None" = None) -> List[str]:
    """The class list for a manifest, checking every label against it.

    Args:
        clips: the manifest (one split of it, or all).
        classes: an explicit list; by default the 10 TAU scenes when every label is one of them,
            otherwise the data set's own sorted labels.
        dataset: the CSV the clips were read from; with a `split` column, the default list takes
            the labels of every split, so that each split gets the same list (an evaluate split
            holding only some classes would otherwise get a shorter one).

    Raises:
        ValueError: a label not in the list, naming the manifest row.
    """
    if classes is None:
        labels = {c.label for c in clips if c.label is not None}
        if dataset is not None and Path(dataset).is_file() and has_split_column(dataset):
            with open(dataset, encoding="utf-8-sig") as handle:
                delimiter = "\t" if "\t" in handle.readline() else ","
            labels |= {(row.get("label") or "").strip() for _, row in read_table(Path(dataset), ["audio"],
                                                                                 delimiter=delimiter)} - {""}
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
