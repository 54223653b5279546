"""`avsc-features`: stage one, from a data set folder to HDF5 feature shards."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import click

from avsc_pipeline.features.shard_engine import BACKENDS, DEFAULT_SHARD_SIZE, RunSummary, parse_part
from avsc_pipeline.corpus.tau import TAU_SPLITS
from avsc_pipeline_cli.common import Group, config_option, load_config, output_folder, setup_logging, verbose_option


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Stage one: features of audio-visual scene recordings into HDF5 shards."""
    setup_logging(verbose)


RUN_OPTIONS = (
    click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes."),
    click.option("--backend", type=click.Choice(BACKENDS), default=BACKENDS[0], show_default=True,
                 help="joblib backend: local processes, or a dask.distributed cluster (needs the [dask] extra)."),
    click.option("--scheduler", help="Dask scheduler address (with --backend dask); a local cluster when absent."),
    click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
                 help="Most segments per shard."),
    click.option("--part", help="I/K: write only this job's share of the shards (for K batch jobs); "
                 "then run `avsc-features index OUT`."),
    click.option("--overwrite", is_flag=True, help="Replace a folder made with other settings."),
    click.option("--strict", is_flag=True, help="Fail on the first bad clip instead of skipping it."),
    click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."),
)


def run_options(command):
    """The options every shard-writing command shares (workers, sharding, resume, strictness)."""
    for option in reversed(RUN_OPTIONS):
        command = option(command)
    return command


def parse_classes(text: Optional[str]) -> Optional[List[str]]:
    """`--classes "a, b"` -> `["a", "b"]` (spaces around names dropped), None when not given."""
    if not text:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


@contextlib.contextmanager
def writing(folder: Path, part: Optional[str]) -> Iterator[None]:
    """Hold `folder`'s writer lock (creating it) while a run fills it: a second run into the same
    folder (or the same `--part`) refuses at once, in one line naming the holder's PID."""
    from avsc_pipeline.storage.folder_lock import FolderBusyError, folder_lock

    output_folder(folder, "output folder")
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(folder_lock(folder, parse_part(part)))
        except FolderBusyError as err:
            raise click.ClickException(str(err)) from None
        yield


def report(summary: RunSummary, rows: str, items: str) -> None:
    """Print what a shard-writing run did, then each skipped clip with its file and reason."""
    click.echo(
        f"{summary.folder}: wrote {len(summary.shards_written)} shards ({summary.rows} {rows}), "
        f"kept {len(summary.shards_kept)} finished shards, {len(summary.skipped)} {items} skipped or cut"
    )
    for item in summary.skipped:
        click.echo(f"  skipped {item['clip_id']} ({item['file']}): {item['reason']}")


@main.command()
@click.argument("dataset_root", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", default="all", show_default=True,
              help="The output folder OUT/SPLIT. For a TAU-layout data set, its list: train, evaluate, test or "
                   "all; for a CSV with a `split` column, the rows of that split; for a CSV without one, only the "
                   "folder's name (e.g. train, so that avsc-train finds it).")
@config_option("YAML file whose `features:` section overrides the defaults.")
@click.option("--classes", help="Comma-separated class list (default: the 10 TAU scenes, or the data's own labels; "
                                "of every split of a CSV with a `split` column).")
@run_options
@verbose_option
def extract(dataset_root: Path, out: Path, split: str, config_path: Optional[Path], classes: Optional[str],
            jobs: int, backend: str, scheduler: Optional[str], shard_size: int, part: Optional[str],
            overwrite: bool, strict: bool, progress: bool, verbose: int) -> None:
    """Extract DATASET_ROOT (a TAU-layout folder or a CSV manifest) into OUT/<split>/shard-*.h5.

    A rerun keeps the finished shards whose clips did not change (label, group, paths, the files'
    sizes and modification times) and writes the others again, saying what changed.

    Examples: avsc-features extract data/demo data/demo-features --split train --jobs 2;
    avsc-features extract my_clips.csv data/my-features --split train
    """
    from avsc_pipeline.features.extract import extract_split
    from avsc_pipeline.corpus.manifest import load_manifest, resolve_classes

    setup_logging(verbose)
    config = load_config(config_path).features
    try:
        if dataset_root.is_dir() and split not in TAU_SPLITS:
            raise ValueError(f"--split: expected one of {list(TAU_SPLITS)} for a TAU-layout data set, got {split!r}")
        clips = load_manifest(dataset_root, split)
        class_list = resolve_classes(clips, parse_classes(classes), dataset_root)
        with writing(out / split, part):
            summary = extract_split(
                clips, out / split, config, class_list, jobs=jobs, backend=backend, scheduler=scheduler,
                shard_size=shard_size, part=parse_part(part), overwrite=overwrite, strict=strict,
                progress=progress,
            )
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    report(summary, "segments", "clips")


@main.command()
@click.argument("dataset_root", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(TAU_SPLITS), default="train",
              show_default=True, help="The split to augment; its stage-one shards must be in OUT/<split>.")
@config_option("YAML file: its `offline_augment:` section overrides the defaults; a `features:` "
               "section must match the stage-one settings.")
@click.option("--ops", help="Comma-separated operations out of pitch,speed,noise,mix "
              "[default: the config's, else all four].")
@click.option("--copies", type=click.IntRange(min=1),
              help="Augmented versions per clip and operation [default: the config's, else 1].")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of every draw [default: the config's, else 0].")
@run_options
@verbose_option
def augment(dataset_root: Path, out: Path, split: str, config_path: Optional[Path], ops: Optional[str],
            copies: Optional[int], seed: Optional[int], jobs: int, backend: str, scheduler: Optional[str],
            shard_size: int, part: Optional[str], overwrite: bool, strict: bool, progress: bool, verbose: int) -> None:
    """Augment the audio of a split into OUT/<split>-aug/shard-*.h5 (run after `extract`).

    Pitch shift, speed change, Gaussian noise and same-class mixing; each augmented row refers to
    the video of its original segment in OUT/<split> instead of copying it.

    Example: avsc-features augment data/demo data/demo-features --split train --jobs 2
    """
    setup_logging(verbose)
    import dataclasses

    from avsc_pipeline.config import load_yaml
    from avsc_pipeline.features.offline_augment_shards import augment_split
    from avsc_pipeline.storage.shards import augmented_split
    from avsc_pipeline.corpus.manifest import load_manifest

    try:
        recipe = load_config(config_path)
        # Without a `features:` section the stage-one folder's own settings are used.
        given = load_yaml(config_path) if config_path else {}
        feature_config = recipe.features if given.get("features") else None
        config = recipe.offline_augment
        overrides = {"ops": tuple(o.strip() for o in ops.split(",") if o.strip()) if ops else None,
                     "copies": copies, "seed": seed}
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
        with writing(out / augmented_split(split), part):
            summary = augment_split(
                load_manifest(dataset_root, split), out / split, out / augmented_split(split), config,
                feature_config=feature_config, jobs=jobs, backend=backend, scheduler=scheduler,
                shard_size=shard_size, part=parse_part(part), overwrite=overwrite, strict=strict,
                progress=progress,
            )
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    report(summary, "augmented segments", "variants")


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def index(out: Path) -> None:
    """(Re)build index.json of OUT (a shard folder, or a folder of split folders)."""
    from avsc_pipeline.storage.index import build_index, shard_folders

    folders = shard_folders(out)
    if not folders:
        raise click.ClickException(f"{out}: no shard-*.h5 files here or in its sub-folders")
    for folder in folders:
        try:
            summary = build_index(folder)
        except ValueError as err:
            raise click.ClickException(str(err)) from err
        click.echo(f"{folder}: {len(summary['shards'])} shards, {summary['rows']} segments, "
                   f"{len(summary['skipped'])} skipped")


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def verify(out: Path) -> None:
    """Check every shard under OUT: opens, shapes, dtypes, finite values, labels, one config.

    Exits non-zero with one line per problem.
    """
    from avsc_pipeline.features.verify import verify_folder
    from avsc_pipeline.storage.index import shard_folders

    folders = shard_folders(out)
    if not folders:
        raise click.ClickException(f"{out}: no shard-*.h5 files here or in its sub-folders")
    problems = [p for folder in folders for p in verify_folder(folder)]
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo(f"{out}: {len(folders)} folder(s) OK")


@main.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clips-per-class", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--duration", type=click.FloatRange(min=1.0), default=10.0, show_default=True,
              help="Seconds per clip.")
def demo_data(out: Path, clips_per_class: int, seed: int, duration: float) -> None:
    """Write a generated teaching data set in the TAU layout to OUT.

    Audio alone confuses some pairs of classes, video alone other pairs; only both separate all ten.
    """
    from avsc_pipeline.demo import DemoConfig, write_demo_dataset

    try:
        config = DemoConfig(clips_per_class=clips_per_class, seed=seed, duration=duration)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    root = write_demo_dataset(out, config, progress=True)
    click.echo(f"{root}: demo data set written ({10 * clips_per_class} clips)")


@main.command()
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", default="tau-av-2021-dev", show_default=True,
              help="tau-av-2021-dev (Zenodo 4477542, 108 GB) or tau-av-2021-eval (Zenodo 4767103).")
@click.option("--parts", default="meta,audio,video", show_default=True,
              help="Comma-separated parts out of meta,audio,video,doc,examples.")
@click.option("--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Files transferred at once.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="New attempts, each resuming the .part file, after a transfer breaks off.")
@click.option("--keep-packages", is_flag=True, help="Keep the zips in ROOT/packages after unpacking them.")
@click.option("--package-list", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON package list of the same format as the shipped one (avsc_pipeline/corpus/"
                   "tau_packages.json, taken from dcase_util).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def download(root: Path, dataset: str, parts: str, jobs: int, retries: int, keep_packages: bool,
             package_list: Optional[Path], progress: bool) -> None:
    """Download a TAU Urban Audio-Visual Scenes 2021 data set into ROOT/<its folder> (TAU layout).

    Each zip is fetched into ROOT/packages (a broken transfer resumes from its .part file with a
    range request), checked against its published MD5 (a mismatch removes it and fetches it once
    more), unpacked atomically and removed (--keep-packages keeps it). Free disk space is checked
    first; a rerun skips what is in place. Then run `avsc-features extract ROOT/<folder> ...`.

    Example: avsc-features download data --jobs 4   (then: make features)
    """
    from avsc_pipeline.corpus.download import (DownloadError, DownloadOptions, download_dataset,
                                               load_package_list, parse_parts)

    try:
        packages = load_package_list(dataset, package_list, parse_parts(parts))
        options = DownloadOptions(jobs=jobs, retries=retries, keep_packages=keep_packages, progress=progress)
        summary = download_dataset(root, packages, options)
    except (ValueError, DownloadError, OSError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"{summary.folder}: {len(summary.fetched)} package(s) fetched, {len(summary.unpacked)} unpacked, "
               f"{len(summary.in_place)} already in place ({packages.title})")


if __name__ == "__main__":
    main()
