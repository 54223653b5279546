"""The shard-writing engine on a toy job: planning, settings files, resume, parts and the summary."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest

from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.errors import ConfigMismatchError
from avsc_pipeline.features.shard_engine import (
    RunSummary, ShardJob, check_run_args, check_state, group_into_shards, parse_part, plan_attrs, state_diff,
    write_shards,
)
from avsc_pipeline.storage.columns import read_columns
from avsc_pipeline.storage.index import load_index
from avsc_pipeline.storage.shards import Column, list_shards, read_attrs


@dataclass(frozen=True)
class Item:
    clip_id: str
    rows: int


def echo(item: Item, threads=None) -> Item:
    return item


def add_rows(writer, item: Item) -> None:
    if item.rows == 0:
        writer.skip(item.clip_id, f"{item.clip_id}.wav", "no rows")
        return
    writer.add(label=np.zeros(item.rows, np.int16), clip_id=[item.clip_id] * item.rows)


def toy_job(folder, items, shard_size=5, tag="a") -> ShardJob:
    folder.mkdir(parents=True, exist_ok=True)  # a real run's check_state makes it
    return ShardJob(
        folder=folder,
        plans=group_into_shards(items, [i.rows for i in items], shard_size),
        columns={"label": Column("int16"), "clip_id": Column("str")},
        attrs=partial(plan_attrs, classes=["a"], config=FeatureConfig(), tag=tag),
        work=echo,
        add=add_rows,
    )


ITEMS = [Item("c0", 3), Item("c1", 2), Item("c2", 0), Item("c3", 4), Item("c4", 9), Item("c5", 1)]


def test_grouping_keeps_order_and_bounds_rows():
    plans = group_into_shards(ITEMS, [i.rows for i in ITEMS], 5)
    assert [[i.clip_id for i in p.clips] for p in plans] == [["c0", "c1", "c2"], ["c3"], ["c4"], ["c5"]]
    assert [p.segments for p in plans] == [5, 4, 9, 1]  # an item above the size gets its own shard
    assert [p.name for p in plans][:2] == ["shard-00000.h5", "shard-00001.h5"]
    assert plans[0].plan_hash != plans[1].plan_hash
    with pytest.raises(ValueError, match="expected shard_size >= 1, got 0"):
        group_into_shards(ITEMS, [1] * 6, 0)
    with pytest.raises(ValueError, match="expected one row count per item, got 2 for 6 items"):
        group_into_shards(ITEMS, [1, 2], 5)


def test_write_shards_summarizes_indexes_and_keeps_finished_shards(tmp_path):
    summary = write_shards(toy_job(tmp_path / "out", ITEMS), progress=False)
    assert isinstance(summary, RunSummary) and summary.folder == tmp_path / "out"
    assert summary.shards_written == [p.name for p in list_shards(tmp_path / "out")] and len(summary.shards_written) == 4
    assert summary.rows == 19 and summary.skipped == [{"clip_id": "c2", "file": "c2.wav", "reason": "no rows"}]
    assert load_index(tmp_path / "out")["rows"] == 19
    ids = np.concatenate([read_columns(p, ["clip_id"])["clip_id"] for p in list_shards(tmp_path / "out")])
    assert ids.tolist() == ["c0"] * 3 + ["c1"] * 2 + ["c3"] * 4 + ["c4"] * 9 + ["c5"]
    assert read_attrs(list_shards(tmp_path / "out")[0])["tag"] == "a"
    again = write_shards(toy_job(tmp_path / "out", ITEMS), progress=False)
    assert again.shards_written == [] and again.shards_kept == summary.shards_written and again.rows == 0
    with pytest.raises(ConfigMismatchError, match="holds other clips"):
        write_shards(toy_job(tmp_path / "out", ITEMS[1:]), progress=False)


def test_parts_write_their_share_without_an_index(tmp_path):
    first = write_shards(toy_job(tmp_path / "out", ITEMS), part=(1, 2), progress=False)
    assert first.shards_written == ["shard-00000.h5", "shard-00002.h5"]
    assert not (tmp_path / "out" / "index.json").exists()
    second = write_shards(toy_job(tmp_path / "out", ITEMS), part=(2, 2), progress=False)
    assert second.shards_written == ["shard-00001.h5", "shard-00003.h5"]
    assert parse_part("2/3") == (2, 3) and parse_part(None) is None
    with pytest.raises(ValueError, match="1 <= I <= K"):
        parse_part("4/3")
    with pytest.raises(ValueError, match="with integers"):
        parse_part("a/b")


def test_settings_file_refuses_other_settings_unless_overwriting(tmp_path):
    folder = tmp_path / "out"
    state = {"feature_config": {"n_mels": 128}, "shard_size": 5}
    check_state(folder, state, overwrite=False, name="run.json")
    check_state(folder, state, overwrite=False, name="run.json")
    write_shards(toy_job(folder, ITEMS), progress=False)
    other = {"feature_config": {"n_mels": 64}, "shard_size": 5}
    with pytest.raises(ConfigMismatchError, match="n_mels: 128 != 64"):
        check_state(folder, other, overwrite=False, name="run.json")
    check_state(folder, other, overwrite=True, name="run.json")
    assert list_shards(folder) == [] and not (folder / "index.json").exists()
    assert state_diff({"a": 1, "cfg": {"x": 1}}, {"cfg": {"x": 2}}) == ["a: 1 != '<missing>'", "cfg.x: 1 != 2"]


def test_bad_worker_settings_are_refused():
    with pytest.raises(ValueError, match=r"expected backend in \('loky', 'dask'\), got 'threads'"):
        check_run_args(1, "threads")
    with pytest.raises(ValueError, match="expected jobs >= 1, got 0"):
        check_run_args(0, "loky")
