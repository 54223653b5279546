"""The TAU Urban Audio-Visual Scenes 2021 layout: its classes, lists and file naming.

```
ROOT/meta.csv                               filename_audio  filename_video  scene_label  identifier
ROOT/evaluation_setup/fold1_train.csv       filename_audio  filename_video  scene_label
ROOT/evaluation_setup/fold1_evaluate.csv    (same columns)
ROOT/evaluation_setup/fold1_test.csv        filename_audio  filename_video
ROOT/audio/<scene>-<city>-<location>-<segment>.wav
ROOT/video/<scene>-<city>-<location>-<segment>.mp4
```

:func:`load_tau` reads one split into :class:`~avsc_pipeline.corpus.clips.Clip` records;
:mod:`.download` fetches and unpacks the set itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple

from avsc_pipeline.corpus.clips import Clip, check_unique, read_table

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


def identifier_from_name(stem: str) -> str:
    """Location identifier from a TAU file stem `<scene>-<city>-<location>-<segment>`.

    Returns `<city>-<location>`, or the whole stem when it does not have that shape.
    """
    parts = stem.split("-")
    if len(parts) >= 4:
        return f"{parts[-3]}-{parts[-2]}"
    return stem


def load_tau(root: "str | os.PathLike[str]", split: str = "all") -> List[Clip]:
    """Clips of one split of a data set in the TAU Urban Audio-Visual Scenes 2021 layout.

    Args:
        root: folder holding `meta.csv`, `evaluation_setup/`, `audio/` and `video/`.
        split: `train`, `evaluate`, `test` (fold1 lists) or `all` (meta.csv).

    Returns:
        One clip per list row; `audio_file` and `video_file` as the list names them
        (`audio/<stem>.wav`, `video/<stem>.mp4`).

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
        meta = {row["filename_audio"]: row for _, row in read_table(meta_path, ["filename_audio"])}
    if split == "all":
        path, rows = meta_path, read_table(meta_path, FOLD_HEADER)
    else:
        path = root / "evaluation_setup" / f"fold1_{split}.csv"
        rows = read_table(path, ["filename_audio"])
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
                audio_file=audio,
                video_file=video,
            )
        )
    check_unique(clips)
    return clips
