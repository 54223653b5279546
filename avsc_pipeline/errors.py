"""Exceptions shared across stages."""

from __future__ import annotations


class BadClipError(ValueError):
    """A clip that cannot be used: missing, empty, truncated or undecodable file, too short.

    Extraction skips such a clip and reports `path` and `reason` (or fails with `--strict`).
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ConfigMismatchError(ValueError):
    """An artifact made with a different config or class list than the one required."""
