"""The paper's ablation tables as runs: `avsc-ablations TABLE FEATURES RUN` and `make ablations`.

`configs/ablations/tables.yaml` holds every row of Tables 1-3 with the paper's accuracy and the
sections that set the row up, and Table 4 ("beyond the paper": PANNs' CNN14 and CLIP in the same
recipe), whose rows show the later literature's figures instead of a paper figure and may read
another features folder (`features: "{features}-waveform"`: CNN14 reads waveform shards). For a table, :func:`run_table` trains the audio steps its rows
start from once (`RUN/audio-plain`, `RUN/audio-augmented`), then each row (`RUN/table-N/<row>`:
a finished row is kept, a stopped one resumes), scores each on `FEATURES/evaluate` and writes
`RUN/table-N.md` and `RUN/table-N.csv`: the row, the paper's accuracy, ours (accuracy, macro
accuracy and log loss) and the difference (of the accuracies: segment accuracy is the headline,
macro accuracy the class-wise average DCASE reports); a row whose `best.pt` was selected on
`evaluate` (`train.validation: evaluate`) is marked "selected on the scored split". A row's config layers `configs/paper.yaml`, `configs/steps/<step>.yaml`,
the row's own sections and then the user's `--config` files (e.g. `configs/demo.yaml`).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from avsc_pipeline.atomic import atomic_open, write_text_atomic
from avsc_pipeline.config import load_yaml
from avsc_pipeline.recipe import Step, configs_dir, preflight, run_step, step_layers
from avsc_pipeline.sections import Recipe, merge_layer, recipe_from_layers
from avsc_pipeline.sections.model import PRETRAINED_AUDIO

logger = logging.getLogger(__name__)


def tables_file() -> Path:
    """`configs/ablations/tables.yaml`, as shipped with the package."""
    return configs_dir() / "ablations" / "tables.yaml"

AUDIO_STEPS = ("plain", "augmented")
STEPS = ("audio", "video", "joint")


@dataclass(frozen=True)
class Row:
    """One row of a table.

    Attributes:
        name: a folder-safe name, unique within its table.
        label: the paper's description of the row.
        paper: the paper's accuracy in % (None for a row beyond the paper: see `reference`).
        step: `audio`, `video` or `joint` (None for a row that cannot be run).
        audio_step: the FCNN the row starts from, `plain` or `augmented` (None: none; a joint row
            needs one unless its audio extractor is pre-trained elsewhere, `model.audio_weights`).
        sections: the row's own config sections.
        score: `audio_step` when the row is that audio step's own model.
        reproducible: False for a row that cannot be run as published (see `reason`).
        reason: why not.
        note: what differs from the paper and why.
        reference: the figures shown instead of the paper's (Table 4: the later literature).
        features: the features folder the row reads instead of FEATURES, a template of it, e.g.
            `"{features}-waveform"` (None: FEATURES).
    """

    name: str
    label: str
    paper: Optional[float] = None
    step: Optional[str] = None
    audio_step: Optional[str] = None
    sections: Dict[str, Any] = field(default_factory=dict)
    score: Optional[str] = None
    reproducible: bool = True
    reason: str = ""
    note: str = ""
    reference: str = ""
    features: Optional[str] = None

    def features_dir(self, features: Path) -> Path:
        """The features folder this row reads, `features` (FEATURES) or the row's own."""
        return Path(features) if self.features is None else Path(self.features.format(features=features))


def load_tables(path: "Optional[str | Path]" = None) -> Dict[int, List[Row]]:
    """Every table's rows, with Table 2's `op:` shorthand expanded into sections.

    Raises:
        ValueError: a malformed entry, naming the file, table and row.
    """
    path = tables_file() if path is None else path
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


def audio_step_sections(kind: str, path: "Optional[str | Path]" = None) -> Dict[str, Any]:
    """The sections of the `plain` or `augmented` audio step, on top of `configs/steps/audio.yaml`."""
    if kind not in AUDIO_STEPS:
        raise ValueError(f"expected an audio step in {AUDIO_STEPS}, got {kind!r}")
    return dict((load_yaml(tables_file() if path is None else path).get("audio_steps") or {}).get(kind) or {})


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
    if row.paper is None and not row.reference:
        raise ValueError(f"{source}: expected the paper's accuracy or a reference figure, got neither")
    pretrained = (row.sections.get("model") or {}).get("audio") in PRETRAINED_AUDIO
    if row.step == "joint" and row.audio_step is None and not pretrained:
        raise ValueError(f"{source}: expected the audio step a joint row starts from (or a pre-trained "
                         f"model.audio in {list(PRETRAINED_AUDIO)}), got none")
    if row.score not in (None, "audio_step"):
        raise ValueError(f"{source}: expected score audio_step or nothing, got {row.score!r}")


def row_recipe(row: Row, init_from: Optional[Path], extra: Sequence[Path] = (),
               overrides: Sequence[str] = ()) -> Recipe:
    """The resolved recipe of a row: paper.yaml, the step's file, the row, `extra` files."""
    layer = dict(row.sections)
    if init_from is not None:
        layer["train"] = {**(layer.get("train") or {}), "init_from": str(init_from)}
    return layered_recipe(row.step, layer, extra, overrides)


def layered_recipe(step: str, layer: Dict[str, Any], extra: Sequence[Path] = (),
                   overrides: Sequence[str] = ()) -> Recipe:
    """`configs/paper.yaml`, then `configs/steps/<step>.yaml`, then `layer`, then the `extra`
    files and `overrides`, resolved into a Recipe (no file is written to merge the layer)."""
    from avsc_pipeline.sections import merge_files

    merged = step_layers(step, [configs_dir() / "paper.yaml"], layer=layer)
    later, _ = merge_files(list(extra), overrides)
    merge_layer(merged, later, "the extra config files")
    return recipe_from_layers(merged, f"paper.yaml + steps/{step}.yaml + row", overrides)


@dataclass
class RowResult:
    """A row's outcome on `evaluate`, or why there is none: accuracy (micro, the figure the
    paper's is compared with), macro accuracy (the class-wise average), log loss, and whether
    the row's `best.pt` was selected on `evaluate` itself (`train.validation: evaluate`)."""

    row: Row
    accuracy: Optional[float] = None
    log_loss: Optional[float] = None
    status: str = ""
    macro_accuracy: Optional[float] = None
    selected_on_scored_split: bool = False


def run_table(table: int, features: Path, run: Path, rows: Optional[Sequence[str]] = None,
              extra: Sequence[Path] = (), overrides: Sequence[str] = (), device: str = "auto",
              progress: bool = False, per_device: int = 1) -> List[RowResult]:
    """Train and score the rows of one table, then write `RUN/table-N.md` and `.csv`.

    With `per_device` K > 1 the audio steps, then the rows, train K at a time on every visible
    GPU (K processes on the CPU; :func:`~avsc_pipeline.packing.run_packed`), each in its own
    seeded process: the table is the one of training them one at a time.

    Raises:
        ValueError: an unknown table or row name, or bad input of a run (named).
    """
    chosen = chosen_rows(table, rows)
    audio_steps, row_steps = table_steps(table, chosen, Path(run), extra, overrides, features=Path(features))
    preflight([*audio_steps.values(), *row_steps.values()], Path(features))
    trained = [row_steps[row.name] for row in chosen if row.name in row_steps]
    if per_device > 1:
        _train_packed(list(audio_steps.values()), features, device, per_device)
        _train_packed(trained, features, device, per_device)
    checkpoints = {kind: _train(step, features, device, progress) for kind, step in audio_steps.items()}
    results = []
    for row in chosen:
        if not row.reproducible:
            results.append(RowResult(row, status=f"not run: {row.reason}"))
            continue
        best = checkpoints[row.audio_step] if row.score == "audio_step" else \
            _train(row_steps[row.name], features, device, progress)
        results.append(_score(row, best, row.features_dir(features)))
    write_table(table, results, Path(run))
    return results


def chosen_rows(table: int, rows: Optional[Sequence[str]] = None) -> List[Row]:
    """The rows of a table, or those of them named in `rows`.

    Raises:
        ValueError: an unknown table or row name.
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
    return chosen


def plan_table(table: int, features: Path, run: Path, rows: Optional[Sequence[str]] = None,
               extra: Sequence[Path] = (), overrides: Sequence[str] = (), device: str = "auto",
               probe_steps: Optional[int] = None) -> str:
    """What running a table will take, trained nothing: each step (the audio steps, then each
    row) with its epochs, rows per epoch and the wall time estimated from a short timed probe on
    `device` (:func:`~avsc_pipeline.training.estimate.estimate_run`); a finished run is listed
    as kept. Writes no checkpoint and no run folder.

    Returns:
        The plan as a Markdown table, with the total.
    """
    from avsc_pipeline.training.estimate import PROBE_STEPS, estimate_run, format_estimates

    chosen = chosen_rows(table, rows)
    audio_steps, row_steps = table_steps(table, chosen, Path(run), extra, overrides, features=Path(features))
    preflight([*audio_steps.values(), *row_steps.values()], Path(features))
    kept = {row.name: f"not run: {row.reason}" for row in chosen if not row.reproducible}
    kept.update({row.name: f"scored as audio-{row.audio_step}" for row in chosen if row.score == "audio_step"})
    estimates = []
    for step in [*audio_steps.values(), *row_steps.values()]:
        if finished(step):
            kept[step.name] = "finished, kept"
            continue
        logger.info("probing %s on %s", step.name, device)
        estimates.append(estimate_run(step.name, step.features or features, step.recipe, device, step.given_features,
                                      probe_steps or PROBE_STEPS))
    return f"# Table {table}: plan\n\n" + format_estimates(estimates, kept)


def finished(step: Step) -> bool:
    """Whether the step's folder holds a finished run (its `last.pt` at the last epoch)."""
    from avsc_pipeline.models.checkpoint import load_checkpoint

    last = step.run_dir / "last.pt"
    if not last.is_file():
        return False
    state = load_checkpoint(last).resume
    return state is not None and state.epoch >= step.recipe.train.epochs


def _train_packed(steps: Sequence[Step], features: Path, device: str, per_device: int) -> None:
    """Train independent steps K per device at once (a later `_train` of each finds it finished)."""
    from avsc_pipeline.packing import run_packed

    todo = [step for step in steps if not finished(step)]
    if not todo:
        return
    rows = run_packed(todo, features, device, per_device)
    if any("stopped_by" in row for row in rows.values()):
        raise KeyboardInterrupt  # the runs wrote last.pt; rerunning the table resumes them


def table_steps(table: int, rows: Sequence[Row], run: Path, extra: Sequence[Path] = (),
                overrides: Sequence[str] = (), features: Optional[Path] = None
                ) -> "tuple[Dict[str, Step], Dict[str, Step]]":
    """The training runs a table's rows need: the audio steps they start from (`RUN/audio-<kind>`,
    each trained once) and each row's own run (`RUN/table-N/<row>`), resolved, nothing trained.
    With `features` (FEATURES), a row that reads another folder (`Row.features`) gets it as its
    step's `features`.

    Returns:
        `({audio kind: Step}, {row name: Step})`; rows scored as an audio step have no own Step.
    """
    kinds = sorted({row.audio_step for row in rows if row.reproducible and row.audio_step})
    audio_steps = {kind: Step(f"audio-{kind}", run / f"audio-{kind}",
                              layered_recipe("audio", audio_step_sections(kind), extra, overrides))
                   for kind in kinds}
    row_steps = {}
    for row in rows:
        if not row.reproducible or row.score == "audio_step":
            continue
        init = audio_steps[row.audio_step].produces if row.step == "joint" and row.audio_step else None
        own = row.features_dir(features) if features is not None and row.features is not None else None
        row_steps[row.name] = Step(row.name, run / f"table-{table}" / row.name, row_recipe(row, init, extra, overrides),
                                   features=own)
    return audio_steps, row_steps


def _train(step: Step, features: Path, device: str, progress: bool) -> Path:
    """Train a step (kept when finished, resumed when stopped); returns its best.pt."""
    row = run_step(step, features, device, progress)
    if "stopped_by" in row:
        raise KeyboardInterrupt  # the run wrote last.pt; rerunning the table resumes it
    return step.produces


def _score(row: Row, checkpoint: Path, features: Path) -> RowResult:
    from avsc_pipeline.evaluation.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, features / "evaluate", progress=False)
    if not result.get("labeled"):
        return RowResult(row, status="no labels in evaluate")
    return RowResult(row, accuracy=result["accuracy"], log_loss=result["log_loss"], status="scored",
                     macro_accuracy=result["class_mean_accuracy"],
                     selected_on_scored_split=bool(result.get("selected_on_scored_split")))


COLUMNS = ("row", "label", "paper_accuracy", "accuracy", "log_loss", "difference", "status", "macro_accuracy",
           "selected_on_scored_split", "reference")
#: The footnote of rows selected on the split they are scored on.
SELECTED_NOTE = "\\* selected on the scored split: best.pt was chosen on `evaluate` (train.validation: evaluate)"


def write_table(table: int, results: Sequence[RowResult], run: Path) -> List[Path]:
    """`RUN/table-N.csv` (accuracies in %) and `RUN/table-N.md`; returns both paths."""
    run.mkdir(parents=True, exist_ok=True)
    records = []
    for result in results:
        ours = None if result.accuracy is None else 100.0 * result.accuracy
        records.append({"row": result.row.name, "label": result.row.label, "paper_accuracy": result.row.paper,
                        "accuracy": ours, "log_loss": result.log_loss,
                        "difference": None if ours is None or result.row.paper is None else ours - result.row.paper,
                        "status": (result.status + (f" ({result.row.note})" if result.row.note else "")),
                        "macro_accuracy": None if result.macro_accuracy is None else 100.0 * result.macro_accuracy,
                        "selected_on_scored_split": result.selected_on_scored_split,
                        "reference": result.row.reference})
    csv_path = run / f"table-{table}.csv"
    with atomic_open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in record.items()} for record in records)
    figure = "paper accuracy" if all(r["paper_accuracy"] is not None for r in records) else "literature"
    lines = [f"# Table {table}", "", f"| row | {figure} | ours: accuracy | ours: macro acc. | ours: log loss | "
             "difference | status |", "|---|---|---|---|---|---|---|"]
    for record in records:
        mark = " \\*" if record["selected_on_scored_split"] else ""
        paper = record["reference"] if record["paper_accuracy"] is None else f"{record['paper_accuracy']:.1f} %"
        cells = [record["label"], paper, _fmt(record["accuracy"], " %", 1) + mark,
                 _fmt(record["macro_accuracy"], " %", 1), _fmt(record["log_loss"], "", 3),
                 _fmt(record["difference"], " pt", 1, signed=True), record["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    if any(record["selected_on_scored_split"] for record in records):
        lines += ["", SELECTED_NOTE]
    md_path = run / f"table-{table}.md"
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    write_text_atomic(run / f"table-{table}.json", json.dumps(records, indent=2) + "\n")
    return [csv_path, md_path]


def _fmt(value: Optional[float], unit: str, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}{unit}" if signed else f"{value:.{digits}f}{unit}"
