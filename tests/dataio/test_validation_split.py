"""What may train when validation holds locations out: offline-mixed rows and their partners,
and the authors' selection on a separate split (`train.validation`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest

from avsc_pipeline import testing
from avsc_pipeline.dataio.samplers import split_items
from avsc_pipeline.dataio.training_input import build_training_input
from avsc_pipeline.sections.loading import LoaderConfig
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.storage.shards import (
    ORIGINAL_VARIANT, STRING, ShardWriter, augment_columns, shard_attrs, shard_name, stage_one_columns,
)

CONFIG = testing.SMALL_FEATURES
CLASSES = ["bus", "park"]
# Six locations per class, one clip (one segment) each: val_fraction 0.34 holds out two a class.
CLIPS = {f"{c}-{k}": (label, f"{c}-loc{k}") for label, c in enumerate(CLASSES) for k in range(6)}


def write_originals(folder: Path, clips: Dict[str, tuple]) -> Path:
    rng = np.random.default_rng(0)
    ids = sorted(clips)
    n = len(ids)
    columns = dict(
        audio=rng.standard_normal((n,) + CONFIG.audio_shape).astype(CONFIG.audio_dtype),
        video=rng.integers(0, 256, (n,) + CONFIG.video_shape, dtype=np.uint8),
        label=np.array([clips[c][0] for c in ids], dtype=np.int16), clip_id=ids,
        segment=np.zeros(n, np.int16), identifier=[clips[c][1] for c in ids], variant=[ORIGINAL_VARIANT] * n,
    )
    folder.mkdir(parents=True)
    schema = stage_one_columns(CONFIG, True)
    with ShardWriter(folder / shard_name(0), schema, shard_attrs(CLASSES, CONFIG, "originals")) as writer:
        writer.add(**complete(columns, schema, n))
    build_index(folder)
    return folder


def write_augmented(folder: Path, rows: Sequence[tuple], with_partner: bool = True) -> Path:
    """`rows` of `(clip, variant, partner)`; without `with_partner` the shards lack the column."""
    n = len(rows)
    nan = np.full(n, np.nan, dtype=np.float32)
    columns = dict(
        audio=np.zeros((n,) + CONFIG.audio_shape, dtype=CONFIG.audio_dtype),
        label=np.array([CLIPS[c][0] for c, _, _ in rows], dtype=np.int16), clip_id=[c for c, _, _ in rows],
        segment=np.zeros(n, np.int16), identifier=[CLIPS[c][1] for c, _, _ in rows],
        variant=[v for _, v, _ in rows], video_ref_clip=[c for c, _, _ in rows],
        video_ref_segment=np.zeros(n, np.int16), copy=np.zeros(n, np.int16), semitones=nan, speed=nan,
        snr_db=nan, gain=nan, partner_clip=[p for _, _, p in rows],
    )
    schema = augment_columns(CONFIG)
    if not with_partner:
        del schema["partner_clip"], columns["partner_clip"]
    folder.mkdir(parents=True)
    with ShardWriter(folder / shard_name(0), schema, shard_attrs(CLASSES, CONFIG, "aug", video_source="../train")) \
            as writer:
        writer.add(**complete(columns, schema, n))
    build_index(folder)
    return folder


def complete(columns: dict, schema: dict, rows: int) -> dict:
    """The columns given, plus any other column of the schema (e.g. file names) left empty."""
    missing = {name: [""] * rows if column.dtype == STRING else np.zeros(rows, column.dtype)
               for name, column in schema.items() if name not in columns}
    return {**columns, **missing}


LOADER = LoaderConfig(batch_size=4, num_workers=0, val_fraction=0.34, aug_fraction=1.0)
NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def held_out(root: Path) -> List[str]:
    """The validation locations the builder holds out (read before any augmented folder exists)."""
    inputs = build_training_input(root, LOADER, None, "cpu", with_video=False, frame_norm=NORM)
    try:
        return inputs.split.held_out.tolist()
    finally:
        inputs.close()


def trained_rows(root: Path, **kwargs) -> List[tuple]:
    inputs = build_training_input(root, LOADER, None, "cpu", with_video=False, frame_norm=NORM, **kwargs)
    try:
        data = inputs.dataset
        return [(str(data.clip_ids[i]), str(data.variants[i]), str(data.partner_clips[i]))
                for i in inputs.split.augmented]
    finally:
        inputs.close()


@pytest.fixture
def features(tmp_path) -> Path:
    write_originals(tmp_path / "train", CLIPS)
    return tmp_path


def pick(held: List[str], label: int, inside: bool) -> List[str]:
    """Clips of class `label` whose location is (`inside`) or is not held out."""
    return sorted(c for c, (lab, loc) in CLIPS.items() if lab == label and (loc in held) == inside)


def test_a_mix_whose_partner_is_held_out_does_not_train(features):
    held = held_out(features)
    assert len(held) == 4  # two of each class's six locations
    train_a, train_b = pick(held, 0, False)[:2]
    held_clip = pick(held, 0, True)[0]
    rows = [
        (train_a, "mix", held_clip),   # the leak: a validation location's audio mixed in
        (train_a, "mix", train_b),     # both from training locations: trains
        (held_clip, "mix", train_a),   # its own location is held out
        (train_b, "pitch", ""),        # no partner: trains
        (train_b, "mix", ""),          # a mix without a recorded partner: cannot be checked
        (train_b, "mix", "no-such-clip"),  # a partner no training row has: cannot be checked
    ]
    write_augmented(features / "train-aug", rows)
    assert trained_rows(features) == [(train_a, "mix", train_b), (train_b, "pitch", "")]


def test_shards_without_a_partner_column_keep_their_mix_rows_out(features, caplog):
    held = held_out(features)
    train_a, train_b = pick(held, 1, False)[:2]
    write_augmented(features / "train-aug", [(train_a, "mix", ""), (train_b, "noise", "")], with_partner=False)
    caplog.set_level("WARNING")
    assert trained_rows(features) == [(train_b, "noise", "")]
    assert "1 offline-mixed rows do not record a partner" in caplog.text


def test_split_items_checks_partner_locations_against_the_held_out_ones():
    identifiers = np.array(["a", "b", "c", "d", "a", "a", "a", "b"])
    labels = np.zeros(8, dtype=np.int64)
    augmented = np.array([False] * 4 + [True] * 4)
    partners = ["", "", "", "", "b", "d", None, "a"]
    selection = np.array([False, True] + [False] * 6)  # `b` is validated on
    split = split_items(identifiers, labels, augmented, partner_locations=partners, selection=selection)
    assert split.held_out.tolist() == ["b"] and split.validation.tolist() == [1] and split.train.tolist() == [0, 2, 3]
    # Partner in `b`: out; partner in `d`: trains; unknown partner: out; own location `b`: out.
    assert split.augmented.tolist() == [5]
    for seed in range(5):  # the same rule under the location split, whichever location it holds out
        split = split_items(identifiers, labels, augmented, 0.25, seed=seed, partner_locations=partners)
        (held,) = split.held_out
        expected = [i for i in (4, 5, 7) if identifiers[i] != held and partners[i] != held]
        assert split.augmented.tolist() == expected


def test_selection_on_another_split_trains_on_every_training_location(features):
    held = held_out(features)
    train_a, train_b = pick(held, 0, False)[:2]
    held_clip = pick(held, 0, True)[0]
    write_augmented(features / "train-aug", [(train_a, "mix", held_clip), (train_a, "mix", "")])
    evaluate = {f"eval-{c}-{k}": (label, f"eval-{c}-loc{k}") for label, c in enumerate(CLASSES) for k in range(2)}
    write_originals(features / "evaluate", evaluate)
    inputs = build_training_input(features, LOADER, None, "cpu", with_video=False, frame_norm=NORM, validation="evaluate")
    try:
        data, split = inputs.dataset, inputs.split
        assert [p.name for p in inputs.folders] == ["train", "train-aug", "evaluate"]
        assert sorted(data.clip_ids[split.validation].tolist()) == sorted(evaluate)
        assert sorted(data.clip_ids[split.train].tolist()) == sorted(CLIPS)  # every training location
        assert sorted(split.held_out.tolist()) == sorted(loc for _, loc in evaluate.values())
        # The partner's location trains now; a mix whose partner is unknown still cannot be checked.
        assert [(str(data.clip_ids[i]), str(data.partner_clips[i])) for i in split.augmented] == [(train_a, held_clip)]
    finally:
        inputs.close()


def test_selection_rows_sharing_training_locations_keep_those_rows_out(features, caplog):
    shared = {"eval-bus": (0, CLIPS["bus-0"][1]), "eval-park": (1, "elsewhere")}
    write_originals(features / "evaluate", shared)
    caplog.set_level("WARNING")
    inputs = build_training_input(features, LOADER, None, "cpu", with_video=False, frame_norm=NORM, validation="evaluate")
    try:
        assert "bus-0" not in inputs.dataset.clip_ids[inputs.split.train].tolist()
        assert len(inputs.split.train) == len(CLIPS) - 1
    finally:
        inputs.close()
    assert "shares recording locations" in caplog.text


@pytest.mark.parametrize("name, message", [("train", "other than the training folders"),
                                           ("train-aug", "other than the training folders"),
                                           ("evaluate", "run `avsc-features extract ... --split evaluate`")])
def test_a_selection_split_that_is_not_there_is_refused(features, name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_training_input(features, LOADER, None, "cpu", with_video=False, frame_norm=NORM, validation=name)
