"""Compare evaluated runs: a plain-text table, report.md, report.csv and a per-class bar chart.

Backs `avsc-report RUN_OR_EVAL_DIR ... --out DIR`. Each argument is one of

* a `metrics.json` file,
* an evaluation folder holding `metrics.json`,
* a run folder holding `eval/<split>/metrics.json` (split `evaluate` when present, else every
  split found).

`metrics.json` holds the dict of :func:`avsc_pipeline.evaluation.metrics.score` (at least
`classes`, `accuracy`, `log_loss` and `per_class`; `log_loss_uncalibrated`, `temperature` and
`ece` where `avsc-eval` wrote them). A run is named after its run folder (or the evaluation
folder outside a run), with ` (<split>)` appended for a split other than `evaluate`; an
ensemble (`"ensemble": true`) is a row of its own named after its evaluation folder (e.g.
`evaluate-ensemble`); rows whose names collide are told apart by their parent folders
(`a/run1`, `b/run1`).

The accuracy columns: `accuracy`, the share of segments classified right (micro accuracy, the
headline figure, as the paper reports it), and `macro acc.`, the mean of the per-class
accuracies (the class-wise average that DCASE reports). A run whose `best.pt` was selected on
the split it is scored on (`train.validation`) is marked `*`: "selected on the scored split".

The `features` column names the features folder each run was scored on (`metrics.json`'s
`features_dir`), as short as tells the folders apart; runs scored on different folders, or on
folders made with different feature configs, are compared with a warning and a note under the
table, since their figures are not comparable.

The log loss columns: `log loss` as scored (calibrated: each checkpoint's temperature, and an
ensemble's own, applied, unless evaluated with `--no-calibration`) and `uncal. log loss`, the
same models at temperature 1; `T` is the temperature applied (an ensemble's own).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from avsc_pipeline.atomic import atomic_open, write_text_atomic

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
PREFERRED_SPLIT = "evaluate"
#: Files that mark a run folder (`avsc-train`'s), for the "run avsc-eval first" message.
RUN_MARKERS = ("best.pt", "last.pt", "config.yaml", "metrics.csv")
_REQUIRED_KEYS = ("classes", "accuracy", "log_loss", "per_class")
SELECTED_MARK = "*"
#: The footnote of the marked rows.
SELECTED_NOTE = f"{SELECTED_MARK} selected on the scored split: best.pt was chosen on the split it is scored on"


@dataclass(frozen=True)
class RunRow:
    """One evaluated run's scores.

    Attributes:
        name: readable run name, unique within a report.
        metrics_path: the metrics.json it came from.
        accuracy: segment accuracy as a fraction in [0, 1].
        log_loss: mean segment log loss.
        per_class_accuracy: C fractions in class order, None for a class without segments.
        classes: the C class names.
        log_loss_uncalibrated: the log loss at temperature 1 (None where not recorded).
        temperature: the temperature applied (None where not recorded).
        ece: the expected calibration error as scored (None where not recorded).
        ensemble: whether the row is an ensemble of checkpoints.
        selected_on_scored_split: whether a checkpoint of the row was selected on the split the
            row is scored on (`metrics.json`'s `selected_on_scored_split`).
        features_dir: the features folder the row was scored on (None where not recorded).
        features_config_hash: the hash of that folder's feature config (None where not recorded).
    """

    name: str
    metrics_path: Path
    accuracy: float
    log_loss: float
    per_class_accuracy: Tuple[Optional[float], ...]
    classes: Tuple[str, ...]
    log_loss_uncalibrated: Optional[float] = None
    temperature: Optional[float] = None
    ece: Optional[float] = None
    ensemble: bool = False
    selected_on_scored_split: bool = False
    features_dir: Optional[str] = None
    features_config_hash: Optional[str] = None

    @property
    def macro_accuracy(self) -> Optional[float]:
        """The mean of the per-class accuracies over the classes present (DCASE's class-wise
        average), None when no class has segments."""
        present = [value for value in self.per_class_accuracy if value is not None]
        return sum(present) / len(present) if present else None

    @property
    def shown_name(self) -> str:
        """The name in the tables, `*` appended when selected on the scored split."""
        return f"{self.name} {SELECTED_MARK}" if self.selected_on_scored_split else self.name


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` produced.

    Attributes:
        table: the plain-text table of :func:`format_table` (run, accuracy, log loss).
        files: `report.md`, `report.csv` and `per_class_accuracy.png` -> their paths.
    """

    table: str
    files: Dict[str, Path]


def _anchor(metrics_path: Path) -> Tuple[Path, Optional[str]]:
    """The folder a metrics file is named after, and its split when it sits in `<run>/eval/<split>/`."""
    eval_dir = metrics_path.parent
    if eval_dir.parent.name == "eval" and eval_dir.parent.parent != eval_dir.parent:
        return eval_dir.parent.parent, eval_dir.name
    return eval_dir, None


def _display_name(metrics_path: Path, depth: int = 1, ensemble: bool = False) -> str:
    folder, split = (metrics_path.parent, None) if ensemble else _anchor(metrics_path)
    parts = folder.parts[-depth:] if folder.parts else (str(folder),)
    name = "/".join(part for part in parts if part not in ("/", "")) or str(folder)
    return name if split in (None, PREFERRED_SPLIT) else f"{name} ({split})"


def _metrics_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    if (path / METRICS_NAME).is_file():
        return [path / METRICS_NAME]
    preferred = path / "eval" / PREFERRED_SPLIT / METRICS_NAME
    if preferred.is_file():
        return [preferred]
    if (path / "eval").is_dir():
        return sorted(p for p in (path / "eval").glob(f"*/{METRICS_NAME}") if p.is_file())
    return []


def find_metrics(path: "str | os.PathLike[str]") -> List[Tuple[str, Path]]:
    """The metrics files one report argument stands for, with their run names.

    Args:
        path: a metrics.json file, an evaluation folder holding one, or a run folder holding
            `eval/<split>/metrics.json`.

    Returns:
        `(name, metrics_path)` pairs: one for a file or an evaluation folder; for a run folder
        the `evaluate` split, or every split when there is no `evaluate` split.

    Raises:
        ValueError: nothing of the above found at `path`.
    """
    path = Path(path)
    found = _metrics_files(path)
    if not found and path.is_dir() and any((path / name).is_file() for name in RUN_MARKERS):
        checkpoint = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
        raise ValueError(f"{path}: a run folder with no evaluation (no eval/<split>/{METRICS_NAME}); run avsc-eval "
                         f"first: avsc-eval --checkpoint {checkpoint} FEATURES/evaluate")
    if not found:
        raise ValueError(
            f"{path}: expected a {METRICS_NAME} file, a folder holding {METRICS_NAME}, or a run folder holding "
            f"eval/<split>/{METRICS_NAME}; found none of these (run avsc-eval first)"
        )
    return [(_display_name(p.resolve()), p) for p in found]


def _unique_names(paths: List[Path], ensembles: Optional[List[bool]] = None) -> List[str]:
    """Names for `paths` (resolved metrics files; `ensembles` marks the ensembles' files), adding
    parent folders until no two collide."""
    depth = [1] * len(paths)
    ensembles = ensembles or [False] * len(paths)
    while True:
        names = [_display_name(p, d, e) for p, d, e in zip(paths, depth, ensembles)]
        groups: Dict[str, List[int]] = {}
        for index, name in enumerate(names):
            groups.setdefault(name, []).append(index)
        clashes = [members for members in groups.values() if len(members) > 1]
        if not clashes:
            return names
        grew = False
        for members in clashes:
            for index in members:
                folder = paths[index].parent if ensembles[index] else _anchor(paths[index])[0]
                if depth[index] < len(folder.parts):
                    depth[index] += 1
                    grew = True
        if not grew:
            return names


def _read_metrics(path: Path) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: expected JSON, got a parse error: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"{path}: expected keys {list(_REQUIRED_KEYS)}, missing {missing}")
    return data


def _row(name: str, path: Path, data: Dict[str, Any]) -> RunRow:
    classes = tuple(str(c) for c in data["classes"])
    per_class = data["per_class"]
    absent = [c for c in classes if c not in per_class]
    if absent:
        raise ValueError(f"{path}: expected per_class entries for every class, missing {absent}")
    accs = tuple(None if per_class[c].get("accuracy") is None else float(per_class[c]["accuracy"]) for c in classes)
    return RunRow(name, path, float(data["accuracy"]), float(data["log_loss"]), accs, classes,
                  _number(data, "log_loss_uncalibrated"), _number(data, "temperature"), _number(data, "ece"),
                  bool(data.get("ensemble", False)), bool(data.get("selected_on_scored_split", False)),
                  features_dir=data.get("features_dir"), features_config_hash=data.get("features_config_hash"))


def _number(data: Dict[str, Any], key: str) -> Optional[float]:
    value = data.get(key)
    return None if value is None else float(value)


def load_rows(paths: Sequence["str | os.PathLike[str]"]) -> List[RunRow]:
    """Read every run named by `paths` (see :func:`find_metrics`), in argument order.

    Raises:
        ValueError: a path without metrics, a malformed metrics.json, or runs with different
            class lists (naming both runs).
    """
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"expected a sequence of paths, got the single path {paths!r}")
    files: List[Path] = []
    for path in paths:
        for _, metrics_path in find_metrics(path):
            resolved = metrics_path.resolve()
            if resolved in files:
                logger.warning("%s: given more than once; reported once", metrics_path)
                continue
            files.append(resolved)
    if not files:
        raise ValueError("expected at least one run folder or metrics file, got none")
    data = [_read_metrics(p) for p in files]
    names = _unique_names(files, [bool(d.get("ensemble", False)) for d in data])
    rows = [_row(name, p, d) for name, p, d in zip(names, files, data)]
    for row in rows[1:]:
        if row.classes != rows[0].classes:
            raise ValueError(
                f"expected runs with the same class list, got {rows[0].name!r} ({rows[0].metrics_path}) with "
                f"{list(rows[0].classes)} and {row.name!r} ({row.metrics_path}) with {list(row.classes)}"
            )
    note = features_note(rows)
    if note:
        logger.warning("%s", note)
    return rows


def features_names(rows: Sequence[RunRow]) -> List[str]:
    """The features folder of each row, by its last parts (`demo-features/evaluate`), with more
    parts where two folders would read the same; `n/a` where not recorded. The tables show the
    column when any row records its folder (`avsc-eval` writes it into `metrics.json`)."""
    folders = sorted({row.features_dir for row in rows if row.features_dir})
    depth = 2
    while depth < max([len(Path(f).parts) for f in folders] + [0]):
        if len({Path(*Path(f).parts[-depth:]) for f in folders}) == len(folders):
            break
        depth += 1
    return [str(Path(*Path(row.features_dir).parts[-depth:])) if row.features_dir else "n/a" for row in rows]


def features_note(rows: Sequence[RunRow]) -> Optional[str]:
    """A warning when the rows were scored on different features folders, or on folders made
    with different feature configs (None when they agree, or where not recorded)."""
    folders = {row.features_dir for row in rows if row.features_dir}
    hashes = {row.features_config_hash for row in rows if row.features_config_hash}
    if len(folders) <= 1 and len(hashes) <= 1:
        return None
    named = ", ".join(f"{row.name}: {name}" for row, name in zip(rows, features_names(rows)))
    what = "different features folders" if len(folders) > 1 else "features made with different configs"
    return f"not comparable: the runs were scored on {what} ({named})"


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f} %"


def _optional(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(rows: Sequence[RunRow], classes: Optional[Sequence[str]] = None) -> str:
    """An aligned plain-text table: run, accuracy (%), macro accuracy (%), log loss, uncalibrated
    log loss, temperature, and per-class accuracy when `classes` is given (columns in `classes`
    order, which must be the rows' class list); a footnote under it when a row is marked."""
    header = ["model", "accuracy", "macro acc.", "log loss", "uncal. log loss", "T"]
    body = [[row.shown_name, _percent(row.accuracy), _percent(row.macro_accuracy), f"{row.log_loss:.3f}",
             _optional(row.log_loss_uncalibrated), _optional(row.temperature, 2)] for row in rows]
    if any(row.features_dir for row in rows):
        header.append("features")
        for line, name in zip(body, features_names(rows)):
            line.append(name)
    if classes is not None:
        classes = _checked_classes(rows, classes)
        header += list(classes)
        for line, row in zip(body, rows):
            line += [_percent(v) for v in row.per_class_accuracy]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = []
    for line in [header] + body:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        lines.append("   ".join(cells).rstrip())
    if any(row.selected_on_scored_split for row in rows):
        lines += ["", SELECTED_NOTE]
    if features_note(rows):
        lines += ["", f"! {features_note(rows)}"]
    return "\n".join(lines)


def _checked_classes(rows: Sequence[RunRow], classes: Sequence[str]) -> List[str]:
    classes = [str(c) for c in classes]
    for row in rows:
        if tuple(classes) != row.classes:
            raise ValueError(f"expected class list {list(row.classes)} of run {row.name!r}, got {classes}")
    return classes


def markdown_table(rows: Sequence[RunRow], classes: Sequence[str]) -> str:
    """A Markdown table: run, accuracy %, macro accuracy %, log loss, uncalibrated log loss,
    temperature, then per-class accuracy % in `classes` order; a footnote when a row is marked."""
    classes = _checked_classes(rows, classes)
    shown = any(row.features_dir for row in rows)
    header = ["run", "accuracy %", "macro acc. %", "log loss", "uncal. log loss", "T"] + ["features"] * shown + classes
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row, shown_features in zip(rows, features_names(rows)):
        cells = [row.shown_name.replace("|", "\\|"), f"{100.0 * row.accuracy:.1f}",
                 "n/a" if row.macro_accuracy is None else f"{100.0 * row.macro_accuracy:.1f}", f"{row.log_loss:.3f}",
                 _optional(row.log_loss_uncalibrated), _optional(row.temperature, 2)] + [shown_features] * shown
        cells += ["n/a" if v is None else f"{100.0 * v:.1f}" for v in row.per_class_accuracy]
        lines.append("| " + " | ".join(cells) + " |")
    if any(row.selected_on_scored_split for row in rows):
        lines += ["", SELECTED_NOTE.replace("*", "\\*", 1)]
    if features_note(rows):
        lines += ["", f"**Warning:** {features_note(rows)}"]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[RunRow], classes: Sequence[str], path: "str | os.PathLike[str]") -> Path:
    """Write the Markdown table's columns as numbers (percent for accuracies; empty for n/a)."""
    classes = _checked_classes(rows, classes)
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "accuracy_percent", "log_loss", "log_loss_uncalibrated", "temperature", "ece",
                         "ensemble", "macro_accuracy_percent", "selected_on_scored_split"]
                        + [f"{c}_accuracy_percent" for c in classes] + ["features_dir"])
        for row in rows:
            per_class = ["" if v is None else repr(100.0 * v) for v in row.per_class_accuracy]
            extra = ["" if v is None else repr(v) for v in (row.log_loss_uncalibrated, row.temperature, row.ece)]
            macro = "" if row.macro_accuracy is None else repr(100.0 * row.macro_accuracy)
            writer.writerow([row.name, repr(100.0 * row.accuracy), repr(row.log_loss)] + extra
                            + [int(row.ensemble), macro, int(row.selected_on_scored_split)] + per_class
                            + [row.features_dir or ""])
    return path


def write_report(paths: Sequence["str | os.PathLike[str]"], out_dir: "str | os.PathLike[str]") -> Report:
    """Compare runs: write report.md, report.csv and per_class_accuracy.png into `out_dir`.

    Args:
        paths: run folders, evaluation folders or metrics.json files (see :func:`find_metrics`).
        out_dir: the folder to write into (created when missing).

    Returns:
        A :class:`Report` with the plain-text table and the written files.
    """
    from avsc_pipeline.evaluation.plots import plot_per_class_accuracy

    rows = load_rows(paths)
    classes = list(rows[0].classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    intro = ("# Run comparison\n\nSegment-level scores; log loss is the primary metric. `log loss` is "
             "calibrated (each checkpoint's temperature, an ensemble's own `T` on top), `uncal. log loss` the "
             "same models at temperature 1. `accuracy` (over segments) is the headline accuracy, as the paper "
             "reports it; `macro acc.` is the mean of the per-class accuracies, the class-wise average DCASE "
             "reports.\n\n")
    markdown = intro + markdown_table(rows, classes)
    files = {"report.md": out / "report.md", "report.csv": out / "report.csv"}
    write_text_atomic(files["report.md"], markdown)
    write_csv(rows, classes, files["report.csv"])
    runs = {row.name: list(row.per_class_accuracy) for row in rows}
    files["per_class_accuracy.png"] = plot_per_class_accuracy(runs, classes, out / "per_class_accuracy.png")
    logger.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return Report(table=table, files=files)
