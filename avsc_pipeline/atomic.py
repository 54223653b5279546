"""The one atomic file write: a temporary file in the target's folder, fsync, rename.

A reader never sees a half-written file under the final name: the bytes go to a temporary file
beside the target (same folder, so same file system, so the rename is atomic), are flushed and
fsynced, and only then is the temporary file renamed onto the target with :func:`os.replace`.
When the write raises, the temporary file is removed, the error re-raised and the target left as
it was (old content kept, or still absent).

Two forms, for the two kinds of writers:

* :func:`atomic_open` yields an open file, for writers that take one (`json.dump`, `csv.writer`,
  `torch.save` to a handle, `yaml.safe_dump`)::

      with atomic_open(path, "w") as handle:
          json.dump(data, handle)

* :func:`atomic_path` yields the temporary path, for writers that open the file themselves
  (`h5py.File`, `soundfile.write`, `av.open`, `Figure.savefig`)::

      with atomic_path(path) as tmp:
          soundfile.write(tmp, pcm, sample_rate)

:func:`write_text_atomic` writes a string in one call.

A temporary file is named `.NAME.<pid>.tmp` (hidden, unique per process) unless the caller names
it: the shard writer uses `NAME.tmp`, one fixed name per shard, so that a rerun after a kill
writes over the leftover of the killed run rather than leaving it beside the shard.

This module imports nothing of the package: every floor may use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import IO, Any, Iterator, Optional

logger = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".tmp"
_MODES = ("w", "wb")


def temporary_path(path: "str | os.PathLike[str]") -> Path:
    """The default temporary name of `path`: `.NAME.<pid>.tmp` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike[str]", temporary: "str | os.PathLike[str] | None" = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, fsync it and rename it to `path`.

    The block must write (and close) a file at the yielded path. If the block raises, or leaves
    no file there, the temporary file is removed, `path` is left untouched and the error raised.

    Args:
        path: the file to write; its folder must exist.
        temporary: the temporary file to use, in the same folder as `path`; default
            :func:`temporary_path`.

    Raises:
        ValueError: `temporary` is not in the folder of `path`, or is `path` itself.
        FileNotFoundError: the block wrote nothing at the temporary path.
    """
    path = Path(path)
    tmp = temporary_path(path) if temporary is None else Path(temporary)
    if tmp.parent.resolve() != path.parent.resolve() or tmp.name == path.name:
        raise ValueError(f"expected a temporary file other than the target in {path.parent}, got {tmp}")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp}: expected the block to write the temporary file of {path}, got none")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave the temporary file.
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_open(path: "str | os.PathLike[str]", mode: str = "w", *, encoding: Optional[str] = "utf-8",
                newline: Optional[str] = None, temporary: "str | os.PathLike[str] | None" = None) -> Iterator[IO[Any]]:
    """Yield a file open for writing at a temporary path beside `path` (see :func:`atomic_path`).

    When the block succeeds the file is closed, fsynced and renamed to `path`; when it raises,
    the temporary file is removed and `path` left untouched.

    Args:
        path: the file to write; its folder must exist.
        mode: `"w"` (text) or `"wb"` (bytes).
        encoding: the text encoding (ignored in `"wb"` mode).
        newline: as :func:`open`'s `newline` (text mode only), e.g. `""` for `csv.writer`.
        temporary: the temporary file to use, in the same folder; default :func:`temporary_path`.

    Raises:
        ValueError: a mode other than `"w"` or `"wb"`.
    """
    if mode not in _MODES:
        raise ValueError(f"expected mode in {_MODES}, got {mode!r}")
    text = mode == "w"
    with atomic_path(path, temporary) as tmp:  # which fsyncs the file once it is closed
        with open(tmp, mode, encoding=encoding if text else None, newline=newline if text else None) as handle:
            yield handle


def write_text_atomic(path: "str | os.PathLike[str]", text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see :func:`atomic_open`); returns `path` as a Path."""
    if not isinstance(text, str):
        raise TypeError(f"expected text as str, got {type(text).__name__}")
    with atomic_open(path, "w", encoding=encoding, newline="") as handle:
        handle.write(text)
    return Path(path)


def _fsync_file(path: Path) -> None:
    """Flush a closed file's data to disk (a writer that closed it may not have)."""
    fd = os.open(path, os.O_RDWR)  # Windows refuses fsync on a read-only descriptor
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as err:
        logger.debug("%s: folder not synced after a rename (%s)", folder, err)
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems (e.g. some network mounts) refuse a folder fsync
        logger.debug("%s: folder not synced after a rename (%s)", folder, err)
    finally:
        os.close(fd)
