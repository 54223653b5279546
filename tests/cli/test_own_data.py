"""A new user's own CSV data set: stale labels, unlabeled rows, the split and id columns, a
byte-order mark, class lists with spaces, and the README's example end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from avsc_pipeline.storage.columns import read_columns
from avsc_pipeline.storage.shards import list_shards
from avsc_pipeline.testing import make_tau_dataset
from avsc_pipeline_cli.features import main as features_main

HEADER = "audio,video,label,group"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Six 2-second clips (WAV + MP4) of three classes; a CSV is written beside them per test."""
    return make_tau_dataset(tmp_path_factory.mktemp("own") / "ds", n_clips=6, seconds=2.0,
                            classes=["north", "south", "east"])


def write_csv(root: Path, name: str, rows, header: str = HEADER, bom: bool = False) -> Path:
    path = root / name
    text = "\n".join([header] + [",".join(row) for row in rows]) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def media_rows(root: Path):
    stems = sorted(p.stem for p in (root / "audio").glob("*.wav"))
    return [[f"audio/{s}.wav", f"video/{s}.mp4", s.split("-")[0], "-".join(s.split("-")[1:3])] for s in stems]


def extract(*args):
    return CliRunner().invoke(features_main, ["extract", *[str(a) for a in args], "--no-progress"])


def labels_of(folder: Path):
    out = {}
    for shard in list_shards(folder):
        columns = read_columns(shard, ["clip_id", "label"])
        out.update(zip(columns["clip_id"], columns["label"].tolist()))
    return out


def test_a_fixed_label_redoes_its_shard_and_says_what_changed(media, tmp_path, caplog):
    rows = media_rows(media)
    csv = write_csv(media, "labels.csv", rows)
    out = tmp_path / "F"
    assert extract(csv, out, "--split", "train", "--classes", "north,south,east", "--shard-size", "4").exit_code == 0
    before = labels_of(out / "train")
    fixed = [list(r) for r in rows]
    fixed[1][2] = "north" if fixed[1][2] != "north" else "south"
    write_csv(media, "labels.csv", fixed)
    caplog.set_level("WARNING")
    result = extract(csv, out, "--split", "train", "--classes", "north,south,east", "--shard-size", "4")
    assert result.exit_code == 0, result.output
    clip = Path(fixed[1][0]).stem
    assert "1 clip changed label" in caplog.text and clip in caplog.text
    assert "wrote 1 shards" in result.output and "kept 2 finished shards" in result.output
    after = labels_of(out / "train")
    assert after[clip] != before[clip] and after[clip] == ["north", "south", "east"].index(fixed[1][2])
    # A manifest with other clips is refused in words, naming them.
    write_csv(media, "labels.csv", fixed[:-1])
    result = extract(csv, out, "--split", "train", "--classes", "north,south,east", "--shard-size", "4")
    assert result.exit_code != 0 and "1 clip removed" in result.output and Path(fixed[-1][0]).stem in result.output


def test_blank_labels_are_warned_and_kept_out_of_training(media, tmp_path, caplog):
    rows = [list(r) for r in media_rows(media)]
    rows[0][2] = ""
    csv = write_csv(media, "blank.csv", rows)
    caplog.set_level("WARNING")
    assert extract(csv, tmp_path / "F", "--split", "train").exit_code == 0
    assert "1 rows without a label" in caplog.text and Path(rows[0][0]).name in caplog.text
    assert -1 in labels_of(tmp_path / "F" / "train").values()


def test_split_and_id_columns_and_a_byte_order_mark(media, tmp_path):
    rows = media_rows(media)
    same_stem = [[r[0], r[1], r[2], r[3], f"{i % 2}/{Path(r[0]).stem}", "train" if i < 4 else "evaluate"]
                 for i, r in enumerate(rows)]
    csv = write_csv(media, "split.csv", same_stem, header=HEADER + ",id,split", bom=True)
    out = tmp_path / "F"
    assert extract(csv, out, "--split", "train").exit_code == 0
    assert extract(csv, out, "--split", "evaluate").exit_code == 0
    assert len(labels_of(out / "train")) == 4 and len(labels_of(out / "evaluate")) == 2
    assert "0/" in next(iter(labels_of(out / "train")))
    result = extract(csv, out, "--split", "test")
    assert result.exit_code != 0 and "no rows of split 'test'" in result.output


def test_a_split_holding_some_classes_gets_the_whole_csvs_class_list(media, tmp_path):
    from avsc_pipeline.dataio.dataset import ShardDataset
    from avsc_pipeline.errors import ConfigMismatchError
    from avsc_pipeline.storage.index import load_index

    rows = media_rows(media)
    classes = sorted({r[2] for r in rows})
    # The evaluate split holds the rows of one class only (the last two, sorted by file name).
    split_rows = [r + ["train" if i < 4 else "evaluate"] for i, r in enumerate(rows)]
    assert len({r[2] for r in split_rows if r[4] == "evaluate"}) == 1
    csv = write_csv(media, "one_class_eval.csv", split_rows, header=HEADER + ",split")
    out = tmp_path / "F"
    for split in ("train", "evaluate"):
        result = extract(csv, out, "--split", split)
        assert result.exit_code == 0, result.output
        assert load_index(out / split)["classes"] == classes
    # --classes still decides; a folder made with another list is refused with the remedy named.
    assert extract(csv, tmp_path / "G", "--split", "evaluate", "--classes", rows[-1][2]).exit_code == 0
    with pytest.raises(ConfigMismatchError, match=f"--classes {','.join(classes)}"):
        ShardDataset([tmp_path / "G" / "evaluate"], classes=classes)


def test_class_list_with_spaces_and_verbose_after_the_subcommand(media, tmp_path):
    csv = write_csv(media, "classes.csv", media_rows(media))
    result = extract(csv, tmp_path / "F", "--classes", "north, south, east", "-v")
    assert result.exit_code == 0, result.output
    result = extract(media, tmp_path / "G", "--split", "bogus")
    assert result.exit_code != 0 and "--split" in result.output


@pytest.mark.slow
def test_the_readme_own_data_example_runs_end_to_end(media, tmp_path):
    """extract (train and evaluate through a split column), train, evaluate: the README's example."""
    from avsc_pipeline_cli.eval import main as eval_main
    from avsc_pipeline_cli.train import main as train_main

    rows = media_rows(media)
    csv = write_csv(media, "my_clips.csv", [r + ["train" if i < 4 else "evaluate"] for i, r in enumerate(rows)],
                    header=HEADER + ",split")
    features = tmp_path / "my-features"
    for split in ("train", "evaluate"):
        assert extract(csv, features, "--split", split, "--classes", "north,south,east").exit_code == 0
    tiny = ["model.audio_widths=[8, 8, 8]", "model.video=small_cnn", "model.video_weights=null",
            "model.fusion_hidden=[16]", "loader.num_workers=0", "loader.batch_size=4", "train.epochs=1",
            "loader.val_fraction=0.34"]
    args = [str(features), str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    result = CliRunner().invoke(train_main, args + [x for t in tiny for x in ("--set", t)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(eval_main, ["--checkpoint", str(tmp_path / "run" / "best.pt"),
                                            str(features / "evaluate"), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "eval" / "evaluate" / "metrics.json").read_text())
    assert metrics["n_segments"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["log_loss"])
