"""The Makefile's `help` (its default goal) lists every target a user can call."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def phony_targets() -> set:
    """Every target named in a `.PHONY:` line (the Makefile's own list, read independently)."""
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith(".PHONY:"):
            targets.update(line.split(":", 1)[1].split())
    return targets


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_help_lists_every_phony_target_and_is_the_default_goal():
    listed = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    named = set(re.findall(r"^make ([\w-]+)", listed, flags=re.MULTILINE))
    targets = phony_targets()
    assert {"demo", "test", "train", "help"} <= targets  # the list was read
    assert sorted(targets - named) == [], f"make help misses {sorted(targets - named)}"
    assert sorted(named - targets) == [], f"make help names targets that are not .PHONY: {sorted(named - targets)}"
    default = subprocess.run(["make", "--no-print-directory"], cwd=REPO, capture_output=True, text=True, check=True)
    assert default.stdout == listed
