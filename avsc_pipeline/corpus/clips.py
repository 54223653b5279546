"""The clip record every manifest reader returns, and the tab-separated lists data sets ship.

A :class:`Clip` keeps two names for each of its files: the path to open (resolved against the
manifest's folder) and the name exactly as the manifest lists it (`audio/a-1.wav` in a TAU list,
`clips/dog_1.flac` in a CSV). Stage one stores the listed names in the shards, so a predictions
file names a data set's own files instead of guessing them from the clip id.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from avsc_pipeline.atomic import atomic_open


@dataclass(frozen=True)
class Clip:
    """One recording: an audio file, its video (if any), its label (if known) and location.

    Attributes:
        clip_id: unique within a manifest (by default the audio file's stem).
        audio: path of the audio file to read.
        video: path of the MP4 file, or None for audio-only data.
        label: scene label, or None where unknown (e.g. the test list).
        identifier: recording location (e.g. `barcelona-161`), used for location-disjoint splits.
        source: where the record came from (`file:line`), named in error messages.
        audio_file: the audio file's name as the manifest lists it (relative names stay
            relative); empty: `str(audio)`.
        video_file: the video file's name as the manifest lists it; empty: `str(video)`, or ""
            without a video.
    """

    clip_id: str
    audio: Path
    video: Optional[Path]
    label: Optional[str]
    identifier: str
    source: str = ""
    audio_file: str = ""
    video_file: str = ""

    def __post_init__(self) -> None:
        # A record made without listed names (a folder of files, a test) names its paths.
        if not self.audio_file:
            object.__setattr__(self, "audio_file", str(self.audio))
        if not self.video_file and self.video is not None:
            object.__setattr__(self, "video_file", str(self.video))


def read_table(path: Path, required: Sequence[str], delimiter: str = "\t") -> List[Tuple[int, dict]]:
    """The rows of a delimited list with a header, each with its line number.

    Args:
        path: the list.
        required: columns the header must hold.
        delimiter: the field separator.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a required column is missing (naming the header).
    """
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
    """Write a tab-separated list as the TAU set has them, atomically (:mod:`avsc_pipeline.atomic`).

    The parent folder is created when missing; returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def check_unique(clips: Iterable[Clip]) -> None:
    """Raise ValueError at the first clip id seen twice, naming both rows."""
    seen: Dict[str, str] = {}
    for clip in clips:
        if clip.clip_id in seen:
            raise ValueError(
                f"{clip.source}: duplicate clip id {clip.clip_id!r} (also at {seen[clip.clip_id]})"
            )
        seen[clip.clip_id] = clip.source
