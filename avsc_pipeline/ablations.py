"""The paper's ablation tables as runs: `avsc-ablations TABLE FEATURES RUN` and `make ablations`.

`configs/ablations/tables.yaml` holds every row of Tables 1-3 with the paper's accuracy and the
sections that set the row up. For a table, :func:`run_table` trains the audio steps its rows
start from once (`RUN/audio-plain`, `RUN/audio-augmented`), then each row (`RUN/table-N/<row>`:
a finished row is kept, a stopped one resumes), scores each on `FEATURES/evaluate` and writes
`RUN/table-N.md` and `RUN/table-N.csv`: the row, the paper's accuracy, ours (accuracy and log
loss) and the difference. A row's config layers `configs/paper.yaml`, `configs/steps/<step>.yaml`,
the row's own sections and then the user's `--config` files (e.g. `configs/demo.yaml`).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from avsc_pipeline.config import load_yaml

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TABLES_FILE = CONFIGS / "ablations" / "tables.yaml"
AUDIO_STEPS = ("plain", "augmented")
STEPS = ("audio", "video", "joint")


@dataclass(frozen=True)
class Row:
    """One row of a table.

    Attributes:
        name: a folder-safe name, unique within its table.
        label: the paper's description of the row.
        paper: the paper's accuracy in %.
        step: `audio`, `video` or `joint` (None for a row that cannot be run).
        audio_step: the FCNN the row starts from, `plain` or `augmented` (None: none).
        sections: the row's own config sections.
        score: `audio_step` when the row is that audio step's own model.
        reproducible: False for a row that cannot be run as published (see `reason`).
        reason: why not.
        note: what differs from the paper and why.
    """

    name: str
    label: str
    paper: float
    step: Optional[str] = None
    audio_step: Optional[str] = None
    sections: Dict[str, Any] = field(default_factory=dict)
    score: Optional[str] = None
    reproducible: bool = True
    reason: str = ""
    note: str = ""


def load_tables(path: "str | Path" = TABLES_FILE) -> Dict[int, List[Row]]:
    """Every table's rows, with Table 2's `op:` shorthand expanded into sections.

    Raises:
        ValueError: a malformed entry, naming the file, table and row.
    """
    data = load_yaml(path)
    steps = data.get("audio_steps") or {}
    tables: Dict[int, List[Row]] = {}
    for number, table in (data.get("tables") or {}).items():
        rows = []
        for entry in table.get("rows") or []:
            entry = dict(entry)
            op = entry.pop("op", None)
            if op is not None:
                entry["sections"] = _single_op(dict(steps.get("plain") or {}), op)
            try:
                row = Row(**entry)
            except TypeError as err:
                raise ValueError(f"{path}: table {number}: {err}") from None
            _check_row(row, f"{path}: table {number}, row {row.name!r}")
            rows.append(row)
        names = [row.name for row in rows]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: table {number}: expected distinct row names, got {names}")
        tables[int(number)] = rows
    return tables


def audio_step_sections(kind: str, path: "str | Path" = TABLES_FILE) -> Dict[str, Any]:
    """The sections of the `plain` or `augmented` audio step, on top of `configs/steps/audio.yaml`."""
    if kind not in AUDIO_STEPS:
        raise ValueError(f"expected an audio step in {AUDIO_STEPS}, got {kind!r}")
    return dict((load_yaml(path).get("audio_steps") or {}).get(kind) or {})


def _single_op(base: Dict[str, Any], op: str) -> Dict[str, Any]:
    augment = dict(base.get("batch_augment") or {})
    augment.update(video_ops=["Identity", op], video_num_ops=1, video_magnitude=14, video_magnitude_bins=31)
    return {**base, "batch_augment": augment}


def _check_row(row: Row, source: str) -> None:
    if not row.reproducible:
        if not row.reason:
            raise ValueError(f"{source}: expected a reason for a row that cannot be reproduced")
        return
    if row.step not in STEPS:
        raise ValueError(f"{source}: expected step in {STEPS}, got {row.step!r}")
    if row.audio_step is not None and row.audio_step not in AUDIO_STEPS:
        raise ValueError(f"{source}: expected audio_step in {AUDIO_STEPS}, got {row.audio_step!r}")
    if row.step == "joint" and row.audio_step is None:
        raise ValueError(f"{source}: expected the audio step a joint row starts from, got none")
    if row.score not in (None, "audio_step"):
        raise ValueError(f"{source}: expected score audio_step or nothing, got {row.score!r}")


def row_sections(row: Row, init_from: Optional[Path], extra: Sequence[Path] = (),
                 overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """The resolved sections of a row: paper.yaml, the step's file, the row, `extra` files."""
    layer = dict(row.sections)
    if init_from is not None:
        layer["train"] = {**(layer.get("train") or {}), "init_from": str(init_from)}
    return layered_sections(f"steps/{row.step}.yaml", layer, extra, overrides)


def layered_sections(step_file: str, layer: Dict[str, Any], extra: Sequence[Path] = (),
                     overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """`configs/paper.yaml`, then `configs/<step_file>`, then `layer`, then the `extra` files and
    `overrides`, resolved into sections."""
    import tempfile

    import yaml

    from avsc_pipeline.recipe import load_sections

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "row.yaml"
        path.write_text(yaml.safe_dump(layer), encoding="utf-8")
        return load_sections([CONFIGS / "paper.yaml", CONFIGS / step_file, path, *extra], overrides)


@dataclass
class RowResult:
    """A row's outcome: accuracy and log loss on `evaluate`, or why there is none."""

    row: Row
    accuracy: Optional[float] = None
    log_loss: Optional[float] = None
    status: str = ""


def run_table(table: int, features: Path, run: Path, rows: Optional[Sequence[str]] = None,
              extra: Sequence[Path] = (), overrides: Sequence[str] = (), device: str = "auto",
              progress: bool = False) -> List[RowResult]:
    """Train and score the rows of one table, then write `RUN/table-N.md` and `.csv`.

    Raises:
        ValueError: an unknown table or row name, or bad input of a run (named).
    """
    tables = load_tables()
    if table not in tables:
        raise ValueError(f"expected a table in {sorted(tables)}, got {table!r}")
    chosen = tables[table]
    if rows:
        unknown = sorted(set(rows) - {row.name for row in chosen})
        if unknown:
            raise ValueError(f"table {table}: unknown row(s) {unknown}; known: {[row.name for row in chosen]}")
        chosen = [row for row in chosen if row.name in rows]
    run = Path(run)
    steps = {row.audio_step for row in chosen if row.reproducible and row.audio_step}
    checkpoints = {kind: _train(features, run / f"audio-{kind}",
                                layered_sections("steps/audio.yaml", audio_step_sections(kind), extra, overrides),
                                device, progress)
                   for kind in sorted(steps)}
    results = []
    for row in chosen:
        results.append(_run_row(row, features, run / f"table-{table}", checkpoints, extra, overrides, device,
                                progress))
    write_table(table, results, run)
    return results


def _run_row(row: Row, features: Path, folder: Path, checkpoints: Dict[str, Path], extra: Sequence[Path],
             overrides: Sequence[str], device: str, progress: bool) -> RowResult:
    if not row.reproducible:
        return RowResult(row, status=f"not run: {row.reason}")
    if row.score == "audio_step":
        best = checkpoints[row.audio_step]
    else:
        init = checkpoints.get(row.audio_step) if row.step == "joint" else None
        sections = row_sections(row, init, extra, overrides)
        best = _train(features, folder / row.name, sections, device, progress)
    return _score(row, best, features)


def _train(features: Path, run_dir: Path, sections: Dict[str, Any], device: str, progress: bool) -> Path:
    """Train into `run_dir` unless it holds a finished run; resume a stopped one. Returns best.pt."""
    from avsc_pipeline.models.checkpoint import load_checkpoint
    from avsc_pipeline.training.run import train_run

    last = run_dir / "last.pt"
    resume = False
    if last.is_file():
        state = load_checkpoint(last).resume
        if state is not None and state.epoch >= sections["train"].epochs:
            logger.info("%s: finished, kept", run_dir)
            return run_dir / "best.pt"
        resume = True
    row = train_run(features, run_dir, sections, resume=resume, overwrite=not resume, device=device,
                    progress=progress)
    if "stopped_by" in row:
        raise KeyboardInterrupt  # the run wrote last.pt; rerunning the table resumes it
    return run_dir / "best.pt"


def _score(row: Row, checkpoint: Path, features: Path) -> RowResult:
    from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, features / "evaluate", progress=False)
    if not result.get("labeled"):
        return RowResult(row, status="no labels in evaluate")
    return RowResult(row, accuracy=result["accuracy"], log_loss=result["log_loss"], status="scored")


COLUMNS = ("row", "label", "paper_accuracy", "accuracy", "log_loss", "difference", "status")


def write_table(table: int, results: Sequence[RowResult], run: Path) -> List[Path]:
    """`RUN/table-N.csv` (accuracies in %) and `RUN/table-N.md`; returns both paths."""
    run.mkdir(parents=True, exist_ok=True)
    records = []
    for result in results:
        ours = None if result.accuracy is None else 100.0 * result.accuracy
        records.append({"row": result.row.name, "label": result.row.label, "paper_accuracy": result.row.paper,
                        "accuracy": ours, "log_loss": result.log_loss,
                        "difference": None if ours is None else ours - result.row.paper,
                        "status": (result.status + (f" ({result.row.note})" if result.row.note else ""))})
    csv_path = run / f"table-{table}.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in record.items()} for record in records)
    lines = [f"# Table {table}", "", "| row | paper accuracy | ours: accuracy | ours: log loss | difference | "
             "status |", "|---|---|---|---|---|---|"]
    for record in records:
        cells = [record["label"], f"{record['paper_accuracy']:.1f} %", _fmt(record["accuracy"], " %", 1),
                 _fmt(record["log_loss"], "", 3), _fmt(record["difference"], " pt", 1, signed=True), record["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    md_path = run / f"table-{table}.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (run / f"table-{table}.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return [csv_path, md_path]


def _fmt(value: Optional[float], unit: str, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}{unit}" if signed else f"{value:.{digits}f}{unit}"
