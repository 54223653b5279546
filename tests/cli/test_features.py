"""The avsc-features commands through click's CliRunner."""

import json

import pytest
from click.testing import CliRunner

from avsc_pipeline_cli.features import main


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("command", [[], ["extract"], ["verify"], ["index"], ["demo-data"]])
def test_help(runner, command):
    result = runner.invoke(main, command + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_extract_index_verify(runner, tau_root, tmp_path):
    out = tmp_path / "feat"
    result = runner.invoke(main, ["extract", str(tau_root), str(out), "--split", "train", "--shard-size", "4",
                                  "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 shards (9 segments)" in result.output
    result = runner.invoke(main, ["verify", str(out)])
    assert result.exit_code == 0 and "OK" in result.output
    (out / "train" / "index.json").unlink()
    result = runner.invoke(main, ["verify", str(out)])
    assert result.exit_code == 1 and "no index" in result.output
    result = runner.invoke(main, ["index", str(out)])
    assert result.exit_code == 0 and "3 shards, 9 segments" in result.output
    assert json.loads((out / "train" / "index.json").read_text())["rows"] == 9


def test_extract_with_config_and_mismatch(runner, tau_root, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("features:\n  n_mels: 64\n")
    out = tmp_path / "feat"
    args = ["extract", str(tau_root), str(out), "--split", "evaluate", "--no-progress"]
    assert runner.invoke(main, args + ["--config", str(config)]).exit_code == 0
    result = runner.invoke(main, args)
    assert result.exit_code != 0 and "n_mels: 64 != 128" in result.output
    assert runner.invoke(main, args + ["--overwrite"]).exit_code == 0
    config.write_text("features:\n  n_melz: 64\n")
    result = runner.invoke(main, args + ["--config", str(config)])
    assert result.exit_code != 0 and "n_melz" in result.output


def test_extract_part_and_bad_part(runner, tau_root, tmp_path):
    out = tmp_path / "feat"
    base = ["extract", str(tau_root), str(out), "--split", "train", "--shard-size", "4", "--no-progress"]
    assert runner.invoke(main, base + ["--part", "1/2"]).exit_code == 0
    assert not (out / "train" / "index.json").exists()
    result = runner.invoke(main, base + ["--part", "x"])
    assert result.exit_code != 0 and "--part I/K" in result.output


def test_missing_dataset_is_a_clear_error(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["extract", str(tmp_path / "empty"), str(tmp_path / "o"), "--split", "train"])
    assert result.exit_code != 0 and "fold1_train.csv: manifest not found" in result.output


def test_demo_data_command(runner, tmp_path):
    result = runner.invoke(main, ["demo-data", str(tmp_path / "demo"), "--clips-per-class", "1", "--duration", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "meta.csv").is_file()
    assert len(list((tmp_path / "demo" / "audio").glob("*.wav"))) == 10
