"""The recipe run as steps, once, in Python: `avsc-train --steps`, `make train` and the ablations.

A recipe is a list of steps, each one training run into `RUN/<step>` from the layered config
files (the user's files, then `configs/steps/<step>.yaml` shipped with the package, then
`--set` values). The runner:

1. resolves every step's :class:`~avsc_pipeline.sections.Recipe` and checks, before the first
   step trains, everything that would otherwise fail hours later (:func:`preflight`): the
   features folders, the class coverage of the training rows, every weights file and the
   `init_from` chain;
2. runs the steps in order (:func:`run_step`): a finished step is kept, a stopped one resumes
   from its `last.pt`, a new one starts;
3. wires `init_from`: a joint step starts from the audio step's `best.pt` of the same run
   folder (:data:`INIT_FROM`), unless its config names another checkpoint.

This module sits above training (it calls :func:`~avsc_pipeline.training.run.train_run`);
training never imports it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from avsc_pipeline.errors import relative_note
from avsc_pipeline.sections import Recipe, apply_overrides, merge_files, merge_layer, recipe_from_layers

logger = logging.getLogger(__name__)

#: The step whose `best.pt` initializes another step's extractors (the paper's two steps).
INIT_FROM: Dict[str, str] = {"joint": "audio"}
#: The recipe's steps, in the order they run.
STEPS = ("audio", "video", "joint")
#: Where the README says to get each kind of weights (named in preflight errors).
WEIGHTS_HELP = ("the README's \"Pre-trained weights\" (Places365 DenseNet-161: "
                "http://places2.csail.mit.edu/models_places365/densenet161_places365.pth.tar, "
                "put at data/weights/densenet161_places365.pth.tar), or --set model.video_weights=null "
                "for random initialization")
AUDIO_WEIGHTS_HELP = ("the README's \"Beyond the paper\" (PANNs' CNN14: Cnn14_mAP=0.431.pth from Zenodo record "
                      "3987831, put at data/weights/Cnn14_mAP=0.431.pth), or --set model.audio_weights=null for "
                      "random initialization")


def configs_dir() -> Path:
    """The folder of config files shipped with the package (`paper.yaml`, `steps/`,
    `ablations/`): package data, so an installed wheel finds them too."""
    from importlib import resources

    return Path(str(resources.files("avsc_pipeline") / "configs"))


@dataclass(frozen=True)
class Step:
    """One training run of the recipe.

    Attributes:
        name: the step's name (`audio`, `video`, `joint`, or an ablation row's).
        run_dir: where it trains.
        recipe: its resolved recipe (with `train.init_from` wired).
        given_features: the `features:` keys its config files give (checked against the shards).
        features: the features folder this step reads instead of the run's (an ablation row on
            other shards, e.g. waveform shards for PANNs' CNN14), or None.
        produces: the checkpoint later steps may start from (`run_dir/best.pt`).
    """

    name: str
    run_dir: Path
    recipe: Recipe
    given_features: Optional[dict] = None
    features: Optional[Path] = None

    @property
    def produces(self) -> Path:
        """The checkpoint later steps start from."""
        return self.run_dir / "best.pt"


def step_layers(name: str, files: Sequence["str | Path"], overrides: Sequence[str] = (),
                layer: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The raw sections of one step: the files, then `configs/steps/<name>.yaml`, then `layer`
    (an ablation row's own sections), then `overrides`."""
    step_file = configs_dir() / "steps" / f"{name}.yaml"
    if not step_file.is_file():
        known = sorted(p.stem for p in (configs_dir() / "steps").glob("*.yaml"))
        raise ValueError(f"expected a step in {known}, got {name!r}")
    merged, _ = merge_files([*files, step_file])
    if layer:
        merge_layer(merged, layer, f"step {name}")
    return apply_overrides(merged, overrides, f"step {name}")


def plan_steps(names: Sequence[str], run: Path, files: Sequence["str | Path"] = (),
               overrides: Sequence[str] = ()) -> List[Step]:
    """The resolved steps of a recipe run into `RUN/<name>`.

    Raises:
        ValueError: an unknown step, an unreadable config, a bad value (named).
    """
    if not names:
        raise ValueError("expected at least one step, got none")
    steps = []
    for name in names:
        merged = step_layers(name, files, overrides)
        source = " + ".join([*(str(f) for f in files), f"steps/{name}.yaml"])
        recipe = recipe_from_layers(merged, source, overrides)
        start = INIT_FROM.get(name)
        given_init = any(o.strip().startswith("train.init_from") for o in overrides)
        if start is not None and not given_init:
            recipe = recipe.replace(train=_replace(recipe.train, init_from=str(Path(run) / start / "best.pt")))
        steps.append(Step(name, Path(run) / name, recipe, merged.get("features") or None))
    return steps


def _replace(section: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(section, **changes)


def preflight(steps: Sequence[Step], features: Path) -> None:
    """Everything the steps need, checked before the first one trains.

    Checks the training features folder (each step's own, `Step.features`, too), that every
    class has training rows, every step's weights file, and every `init_from`: a file that
    exists, or the `best.pt` an earlier step of this run writes.

    Raises:
        ValueError: one message listing every problem, each naming the file and what to do.
    """
    problems: List[str] = []
    folders = dict.fromkeys([Path(features)] + [Path(s.features) for s in steps if s.features is not None])
    for folder in folders:
        problems += _features_problems(folder)
    produced = set()
    for step in steps:
        problems += _weights_problems(step)
        problems += _selection_problems(step, Path(step.features or features))
        init = step.recipe.train.init_from
        if init and Path(init) not in produced and not Path(init).is_file():
            problems.append(f"step {step.name}: train.init_from {init} does not exist and no earlier step of "
                            f"this run writes it{relative_note(init)}; train that step first or give "
                            "--set train.init_from=PATH")
        produced.add(step.produces)
    if problems:
        raise ValueError("before training anything:\n  " + "\n  ".join(problems))


def _selection_problems(step: Step, features: Path) -> List[str]:
    """A problem when the step selects its checkpoint on a split folder that is not there."""
    from avsc_pipeline.storage.index import INDEX_NAME

    selection = step.recipe.train.validation
    if selection == "locations" or (features / selection / INDEX_NAME).is_file():
        return []
    return [f"step {step.name}: train.validation {selection!r} names no features split folder "
            f"({features / selection} has no {INDEX_NAME}); extract it, or use `locations`"]


def _features_problems(features: Path) -> List[str]:
    """Why `features` cannot be trained from (no training shards, a split folder given, classes
    without rows), or nothing."""
    from avsc_pipeline.storage.index import INDEX_NAME, load_index

    train = features / "train"
    if (train / INDEX_NAME).is_file():
        return class_coverage(load_index(train), train)
    if (features / INDEX_NAME).is_file():
        return [f"{features}: this is a split folder; give its parent ({features.parent})"]
    return [f"{train}: no training features (no {INDEX_NAME}); run `make features` "
            f"(avsc-features extract ... --split train) first"]


def class_coverage(index: Dict[str, Any], folder: Path) -> List[str]:
    """A problem when some classes of the shards' list have no training rows (e.g. a TAU list
    that fills only some of the ten classes), else nothing."""
    classes = list(index.get("classes") or [])
    counts = index.get("class_counts") or {}
    empty = [name for name in classes if not counts.get(name)]
    if not empty:
        return []
    return [f"{folder}: {len(empty)} of {len(classes)} classes have no training rows ({', '.join(empty[:10])}); "
            "extract a list that covers every class, or give --classes to avsc-features extract"]


def _weights_problems(step: Step) -> List[str]:
    from avsc_pipeline.sections.model import NAMED_WEIGHTS

    model = step.recipe.model
    problems = []
    audio = model.audio_weights
    if model.uses_audio and audio is not None and not Path(audio).is_file():
        problems.append(f"step {step.name}: model.audio_weights {audio} not found{relative_note(audio)}; "
                        f"get it from {AUDIO_WEIGHTS_HELP}")
    weights = model.video_weights
    if not model.uses_video or weights is None or weights in NAMED_WEIGHTS:
        return problems
    if Path(weights).is_file():
        return problems
    return problems + [f"step {step.name}: model.video_weights {weights} not found{relative_note(weights)}; "
                       f"get it from {WEIGHTS_HELP}"]


def run_step(step: Step, features: Path, device: str = "auto", progress: bool = True) -> Dict[str, Any]:
    """Train one step unless its folder holds a finished run; resume a stopped one. The step
    reads `features`, or its own folder where it has one (`Step.features`).

    Returns:
        The training's last metrics row (`stopped_by` when a signal stopped it), or
        `{"kept": True}` for a finished run that was kept.
    """
    from avsc_pipeline.models.checkpoint import load_checkpoint
    from avsc_pipeline.training.run import train_run

    last = step.run_dir / "last.pt"
    resume = False
    if last.is_file():
        state = load_checkpoint(last).resume
        if state is not None and state.epoch >= step.recipe.train.epochs:
            logger.info("step %s: %s holds a finished run, kept", step.name, step.run_dir)
            return {"kept": True}
        resume = True
        logger.info("step %s: resuming %s", step.name, last)
    return train_run(step.features or features, step.run_dir, step.recipe, given_features=step.given_features,
                     resume=resume, overwrite=not resume, device=device, progress=progress)


def run_steps(steps: Sequence[Step], features: Path, device: str = "auto", progress: bool = True) -> Dict[str, Any]:
    """Check, then run the steps in order; stops at a step stopped by a signal.

    Returns:
        `{step name: its row}`; the last entry has `stopped_by` when a signal stopped it.
    """
    preflight(steps, features)
    rows: Dict[str, Any] = {}
    for step in steps:
        logger.info("step %s -> %s", step.name, step.run_dir)
        rows[step.name] = row = run_step(step, features, device, progress)
        if "stopped_by" in row:
            break
    return rows
