"""What defines a clip's rows, recorded beside the shards, so that a rerun sees what changed.

Stage one keeps finished shards on a rerun. Whether a shard is still valid is decided by every
field that defines its rows: the clip id, label, group (recording location), the audio and video
paths and the files' sizes and modification times. `clips.json` in the split folder records
them; a rerun compares the manifest with it and

* rewrites the shards whose clips changed (a fixed label, a re-encoded file), saying in words
  what changed ("1 clip changed label: a-1 (south -> north)");
* refuses, in words, a manifest that adds or removes clips (the shards would be planned anew):
  `--overwrite` extracts the folder again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

from avsc_pipeline.errors import ConfigMismatchError
from avsc_pipeline.corpus.clips import Clip
from avsc_pipeline.storage.index import write_json_atomic

logger = logging.getLogger(__name__)

CLIPS_NAME = "clips.json"
#: The recorded fields, in the order changes are reported, with the words used for them.
FIELDS = {"label": "label", "identifier": "group", "audio": "audio path", "video": "video path",
          "audio_file": "audio file (size or modification time)",
          "video_file": "video file (size or modification time)"}
_SHOWN = 5


def _file_state(path: Optional[Path]) -> Optional[List[int]]:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def clip_record(clip: Clip) -> Dict[str, Any]:
    """The fields that define a clip's rows (see the module docstring)."""
    return {"label": clip.label, "identifier": clip.identifier, "audio": str(clip.audio),
            "video": None if clip.video is None else str(clip.video),
            "audio_file": _file_state(clip.audio), "video_file": _file_state(clip.video)}


def load_records(folder: Path) -> Optional[Dict[str, Dict[str, Any]]]:
    """The records of the last run into `folder`, or None where there are none."""
    path = folder / CLIPS_NAME
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable (%s); every clip is taken as changed", path, err)
        return {}


def describe_changes(old: Dict[str, Dict[str, Any]], new: Dict[str, Dict[str, Any]]) -> Dict[str, List[str]]:
    """Per kind of change, the clips it concerns, in words: `{"changed label": ["a (x -> y)"], ...}`.

    Kinds: `added`, `removed`, and `changed <field>` for each field of :data:`FIELDS`.
    """
    out: Dict[str, List[str]] = {}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    if added:
        out["added"] = added
    if removed:
        out["removed"] = removed
    for field, words in FIELDS.items():
        lines = []
        for clip_id in sorted(set(old) & set(new)):
            before, after = old[clip_id].get(field), new[clip_id].get(field)
            if before != after:
                lines.append(clip_id if field.endswith("_file") else f"{clip_id} ({before} -> {after})")
        if lines:
            out[f"changed {words}"] = lines
    return out


def changes_text(changes: Dict[str, List[str]]) -> str:
    """`"3 clips changed label: a (x -> y), ...; 1 clip added: b"`."""
    parts = []
    for kind, clips in changes.items():
        shown = ", ".join(clips[:_SHOWN]) + (f", ... ({len(clips) - _SHOWN} more)" if len(clips) > _SHOWN else "")
        parts.append(f"{len(clips)} clip{'s' if len(clips) != 1 else ''} {kind}: {shown}")
    return "; ".join(parts)


def changed_clips(folder: Path, clips: Sequence[Clip], overwrite: bool) -> Set[str]:
    """Compare the manifest with the folder's records; returns the ids of changed clips.

    Raises:
        ConfigMismatchError: the manifest adds or removes clips (in words), unless `overwrite`.
    """
    new = {clip.clip_id: clip_record(clip) for clip in clips}
    old = None if overwrite else load_records(folder)
    if old is None:
        return set()
    changes = describe_changes(old, new)
    if "added" in changes or "removed" in changes:
        raise ConfigMismatchError(f"{folder}: the manifest has other clips than the shards ({changes_text(changes)}); "
                                  "use --overwrite to extract the folder again")
    if changes:
        logger.warning("%s: %s; their shards are written again", folder, changes_text(changes))
    return {clip_id for clip_id in new if clip_id in old and new[clip_id] != old[clip_id]}


def write_records(folder: Path, clips: Sequence[Clip]) -> None:
    """Record the clips' defining fields beside the shards (atomically)."""
    write_json_atomic({clip.clip_id: clip_record(clip) for clip in clips}, folder / CLIPS_NAME)
