"""Atomic, resumable unpacking of a data set's zip packages into one folder.

Several packages fill one folder (the TAU development set's 8 audio and 16 video zips all
unpack into `audio/` and `video/`), so a package cannot be unpacked by renaming one folder.
Instead each package is extracted into a staging folder beside the target, every file is then
moved into place with `os.replace` (atomic on one file system), and only then is a marker
written (`TARGET/.unpacked/<package>.md5`, holding the package's MD5). A crash leaves whole
files or none at each path, and no marker: a rerun unpacks the package again over them. A
marker whose MD5 matches says the package is in place, so a rerun skips it.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import List, Tuple

from avsc_pipeline.atomic import write_text_atomic

logger = logging.getLogger(__name__)

MARKER_FOLDER = ".unpacked"
_COPY_CHUNK = 1 << 20


def marker_path(target: Path, package_name: str) -> Path:
    """The marker that says `package_name` is unpacked into `target`."""
    return Path(target) / MARKER_FOLDER / f"{package_name}.md5"


def is_unpacked(target: Path, package_name: str, md5: str) -> bool:
    """True when `target` holds a marker for `package_name` with exactly this `md5`."""
    marker = marker_path(target, package_name)
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == md5


def staging_folder(target: Path, package_name: str) -> Path:
    """Where `package_name` is extracted before its files move into `target` (same file system)."""
    target = Path(target)
    return target.parent / f".{target.name}.unpacking" / package_name


def member_paths(names: List[str], top_folder: str) -> List[Tuple[str, PurePosixPath]]:
    """Each file member's name and its path relative to the target folder.

    A package whose members all sit under one folder named `top_folder` (the data set's own
    folder name) has that level removed, so that packages made with and without it unpack alike.

    Raises:
        ValueError: a member with an absolute path or `..` (it would write outside the target).
    """
    paths = []
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
            raise ValueError(f"expected relative member paths inside the folder, got {name!r}")
        if not name.endswith("/"):
            paths.append((name, path))
    if paths and all(len(p.parts) > 1 and p.parts[0] == top_folder for _, p in paths):
        paths = [(name, PurePosixPath(*p.parts[1:])) for name, p in paths]
    return paths


def unpack_package(zip_path: Path, target: Path, md5: str, top_folder: str) -> int:
    """Unpack one verified zip into `target` atomically, file by file, then mark it done.

    Args:
        zip_path: the package (its MD5 already checked).
        target: the data set folder (created when missing).
        md5: the package's MD5, written into its marker.
        top_folder: a top-level folder of this name inside the zip is merged into `target`
            rather than nested in it.

    Returns:
        The number of files unpacked.

    Raises:
        ValueError: the file is not a zip, or a member is damaged or points outside `target`.
    """
    zip_path, target = Path(zip_path), Path(target)
    staging = staging_folder(target, zip_path.name)
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of a crashed unpack are never trusted
    staging.mkdir(parents=True)
    try:
        files = _extract_to(zip_path, staging, top_folder)
        for relative in files:
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, destination)
        _write_marker(target, zip_path.name, md5)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s: %d files unpacked into %s", zip_path.name, len(files), target)
    return len(files)


def _extract_to(zip_path: Path, staging: Path, top_folder: str) -> List[PurePosixPath]:
    try:
        with zipfile.ZipFile(zip_path) as archive:
            files = member_paths(archive.namelist(), top_folder)
            for name, relative in files:
                out = staging / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                # ZipFile.open checks each member's CRC as it is read: a damaged member raises.
                with archive.open(name) as source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink, _COPY_CHUNK)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{zip_path}: expected a zip file, got a damaged or foreign file ({err})") from err
    return [relative for _, relative in files]


def _write_marker(target: Path, package_name: str, md5: str) -> None:
    marker = marker_path(target, package_name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, md5 + "\n")


def clear_staging(target: Path) -> None:
    """Remove every staging folder of `target` (call it when no unpacking is under way)."""
    shutil.rmtree(staging_folder(target, "x").parent, ignore_errors=True)
