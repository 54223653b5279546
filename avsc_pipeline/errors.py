"""Exceptions shared across stages."""

from __future__ import annotations

import os


class BadClipError(ValueError):
    """A clip that cannot be used: missing, empty, truncated or undecodable file, too short.

    Extraction skips such a clip and reports `path` and `reason` (or fails with `--strict`).
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def check_media_file(path: str, kind: str) -> None:
    """Raise :class:`BadClipError` unless `path` is an existing, non-empty file.

    Args:
        path: the file.
        kind: what it should hold, named in the reason (`"audio"` or `"video"`).
    """
    if not os.path.isfile(path):
        raise BadClipError(path, f"{kind} file not found")
    if os.path.getsize(path) == 0:
        raise BadClipError(path, f"{kind} file is empty")


class ConfigMismatchError(ValueError):
    """An artifact made with a different config or class list than the one required."""


def not_found(path: "str | os.PathLike[str]", what: str) -> str:
    """`"<path>: <what> not found"`, saying for a relative path that it was resolved against the
    current folder (which is often not the folder the user had in mind)."""
    return f"{os.fspath(path)}: {what} not found{relative_note(path)}"


def relative_note(path: "str | os.PathLike[str]") -> str:
    """`" (a relative path, resolved against the current folder ...)"` for a relative path, else
    nothing: appended where a file is reported missing."""
    if os.path.isabs(path):
        return ""
    return f" (a relative path, resolved against the current folder {os.getcwd()})"


def describe(value: object) -> str:
    """A short description of a value for "expected X, got Y" messages: a tensor's or array's
    dtype and shape, otherwise the type's name."""
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is not None and shape is not None:
        return f"{dtype} {type(value).__name__} of shape {tuple(shape)}"
    return type(value).__name__
