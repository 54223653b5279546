"""Compare two feature folders file by file: are the shards (and their index and settings) the same?

Made to check that a change which should not alter stage one (a rename, a move) leaves its
output byte-identical: extract the same data set before and after, then

    .venv/bin/python bench/compare_shards.py BEFORE AFTER

Every `shard-*.h5`, `index.json` and settings file under either folder (matched by relative
path) is reported as `identical` or `different`; for a shard that differs in bytes, the
datasets and attributes that differ are named (a difference in bytes only, with equal datasets
and attributes, is the HDF5 layout). Exits 1 when any file differs or is missing on one side.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
from pathlib import Path
from typing import List

PATTERNS = ("shard-*.h5", "index.json", "extraction.json", "augmentation.json")


def files_under(root: Path) -> List[Path]:
    """Relative paths of the compared files under `root`, sorted."""
    return sorted({p.relative_to(root) for pattern in PATTERNS for p in root.rglob(pattern)})


def shard_differences(a: Path, b: Path) -> List[str]:
    """The datasets and attributes in which two shards differ (empty when their contents agree)."""
    import h5py
    import numpy as np

    out = []
    with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb:
        for name in sorted(set(ha.keys()) | set(hb.keys())):
            if name not in ha or name not in hb:
                out.append(f"dataset {name} only in {'before' if name in ha else 'after'}")
                continue
            da, db = ha[name], hb[name]
            if da.dtype != db.dtype or da.shape != db.shape or not _equal(da[()], db[()]):
                out.append(f"dataset {name}")
        for key in sorted(set(ha.attrs.keys()) | set(hb.attrs.keys())):
            va, vb = ha.attrs.get(key), hb.attrs.get(key)
            if not _equal(va, vb):
                out.append(f"attribute {key}: {va!r} != {vb!r}")
    return out


def _equal(a, b) -> bool:
    """Equal arrays, NaN equal to NaN (augmented rows store NaN for parameters they lack)."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    floats = a.dtype.kind == "f" and b.dtype.kind == "f"
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=floats))


def compare(before: Path, after: Path) -> int:
    """Print one line per file; returns how many files differ or are missing on one side."""
    names = sorted(set(files_under(before)) | set(files_under(after)))
    bad = 0
    for name in names:
        a, b = before / name, after / name
        if not a.is_file() or not b.is_file():
            print(f"{name}: missing {'before' if not a.is_file() else 'after'}")
            bad += 1
        elif filecmp.cmp(a, b, shallow=False):
            print(f"{name}: identical")
        else:
            bad += 1
            detail = shard_differences(a, b) if name.suffix == ".h5" else []
            print(f"{name}: different" + (f" ({'; '.join(detail)})" if detail else ""))
    print(f"{len(names) - bad} of {len(names)} files identical")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="feature folder made before the change")
    parser.add_argument("after", type=Path, help="feature folder made after it")
    args = parser.parse_args()
    for folder in (args.before, args.after):
        if not folder.is_dir():
            parser.error(f"{folder}: not a folder")
    sys.exit(1 if compare(args.before, args.after) else 0)


if __name__ == "__main__":
    main()
