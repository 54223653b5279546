"""A writer's lock on an output folder, so that two runs never fill one folder at once.

`avsc-features extract` and `augment` hold it while they write a split folder: a second run into
the same folder refuses at once, naming the holder's process id, instead of doing the whole work
again beside the first. The lock is `fcntl.flock` on a file in the folder (:data:`LOCK_NAME`,
holding the holder's PID): it works across processes, and it never goes stale, because the
kernel drops it when its holder exits, however it exits. The file stays, empty once released.

The parts of one folder (`--part I/K`, the tasks of a Slurm array) run side by side: each holds
the folder's lock shared and its part's own lock file exclusively, so a part excludes a whole
run and a second run of the same part, but not the other parts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

logger = logging.getLogger(__name__)

LOCK_NAME = ".writer.lock"
#: flock errors that mean "this file system cannot lock", not "someone holds the lock".
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


class FolderBusyError(RuntimeError):
    """Another process holds the folder's writer lock (the message names its PID)."""


def part_lock_name(part: Tuple[int, int]) -> str:
    """The lock file of part `(I, K)` of a folder."""
    return f"{LOCK_NAME}.part-{part[0]}-of-{part[1]}"


@contextlib.contextmanager
def folder_lock(folder: "str | os.PathLike[str]", part: Optional[Tuple[int, int]] = None) -> Iterator[Path]:
    """Hold `folder`'s writer lock (creating the folder) for the `with` block.

    Args:
        folder: the output folder.
        part: `(I, K)` for a run that writes part I of K (`--part I/K`); None for a whole run.

    Yields:
        `folder` as a Path.

    Raises:
        FolderBusyError: another process holds the lock: a whole run, or (for a whole run, or
            the same part) a part run; the message names its PID.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        if part is None:
            held.enter_context(_locked(folder / LOCK_NAME, folder, exclusive=True))
        else:
            held.enter_context(_locked(folder / LOCK_NAME, folder, exclusive=False))
            held.enter_context(_locked(folder / part_lock_name(part), folder, exclusive=True))
        yield folder


@contextlib.contextmanager
def _locked(path: Path, folder: Path, exclusive: bool) -> Iterator[None]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(_busy_message(folder, path)) from None
        except OSError as err:
            if err.errno not in _NO_LOCKING:
                raise
            logger.warning("%s: this file system cannot lock files (%s); a second run into this folder "
                           "would not be noticed", folder, err.strerror)
            exclusive = False  # nothing written: the PID would name a holder without a lock
        if exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if exclusive:
                os.ftruncate(fd, 0)  # released: nobody to name
    finally:
        os.close(fd)  # drops the lock


def _busy_message(folder: Path, refused: Path) -> str:
    holders = [f"PID {pid} (part {name.rsplit('.part-', 1)[1].replace('-of-', '/')})"
               for name, pid in _held_parts(folder, refused)]
    if not holders:
        pid = _live_pid(refused)
        holders = [f"PID {pid}" if pid is not None else "PID unknown (it is starting)"]
    return (f"{folder}: another run is writing this folder ({', '.join(holders)}); wait for it to finish or "
            "stop it, then run again")


def _held_parts(folder: Path, refused: Path) -> List[Tuple[str, int]]:
    """`(lock file name, PID)` of the part locks that are held, when `refused` is the folder's
    own lock (a part run holds it shared, naming itself in its part's file)."""
    import fcntl

    if refused.name != LOCK_NAME:
        return []
    held = []
    for path in sorted(folder.glob(f"{LOCK_NAME}.part-*")):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _live_pid(path)
            if pid is not None:
                held.append((path.name, pid))
        finally:
            os.close(fd)
    return held


def _live_pid(path: Path) -> Optional[int]:
    """The PID written in a lock file, if it names a running process."""
    try:
        pid = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # someone else's process: it runs
        pass
    return pid
