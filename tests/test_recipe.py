"""The recipe runner: steps resolved from the packaged configs, everything checked before the
first step trains, `init_from` wired between steps, finished steps kept; and the run-folder check
that compares only what a step's model and training read."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from avsc_pipeline.recipe import class_coverage, configs_dir, plan_steps, preflight, run_steps
from avsc_pipeline.sections import load_recipe
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import write_random_shard
from avsc_pipeline.training.run_dir import run_config_diff
from avsc_pipeline_cli.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.audio_widths=[8, 8, 8]", "model.video=small_cnn", "model.video_weights=null",
        "model.fusion_hidden=[16]", "loader.batch_size=8", "loader.num_workers=0", "train.epochs=1",
        "train.optimizer=adam", "train.lr=0.003", "train.scheduler=none", "train.lr_decay=0",
        "loader.aug_fraction=0", "batch_augment.mixup_fraction=0"]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("features")
    write_random_shard(root / "train" / "shard-00000.h5", 120, FeatureConfig(n_mels=32, image_size=32),
                       seed=0, identifiers=3)
    build_index(root / "train")
    return root


def test_the_packaged_steps_resolve_and_the_joint_step_starts_from_the_audio_step(tmp_path):
    steps = plan_steps(["audio", "joint"], tmp_path / "run", [configs_dir() / "paper.yaml"])
    assert [s.name for s in steps] == ["audio", "joint"]
    audio, joint = steps
    assert audio.recipe.model.modality == "audio" and audio.recipe.train.epochs == 254
    assert audio.recipe.train.lr_decay == 1e-6
    assert joint.recipe.train.init_from == str(tmp_path / "run" / "audio" / "best.pt")
    assert audio.run_dir == tmp_path / "run" / "audio"


def test_an_explicit_init_from_wins(tmp_path):
    steps = plan_steps(["joint"], tmp_path, overrides=["train.init_from=elsewhere.pt"])
    assert steps[0].recipe.train.init_from == "elsewhere.pt"


def test_an_unknown_step_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"expected a step in \['audio', 'joint', 'video'\], got 'jiont'"):
        plan_steps(["jiont"], tmp_path)


def test_class_coverage_names_the_empty_classes():
    index = {"classes": [f"c{i}" for i in range(10)], "class_counts": {"c0": 40}}
    (problem,) = class_coverage(index, Path("feats/train"))
    assert "9 of 10 classes have no training rows" in problem and "c1" in problem
    assert class_coverage({"classes": ["a"], "class_counts": {"a": 1}}, Path("x")) == []


def test_preflight_names_a_missing_weights_file_and_where_to_get_it(features, tmp_path):
    steps = plan_steps(["audio", "joint"], tmp_path / "run", overrides=TINY + ["model.video_weights=w/places.pth"])
    with pytest.raises(ValueError) as err:
        preflight(steps, features)
    message = str(err.value)
    assert "step joint: model.video_weights w/places.pth not found" in message
    assert "resolved against the current folder" in message and "places365" in message
    assert "step audio" not in message  # an audio model reads no video weights


def test_preflight_follows_the_init_from_chain(features, tmp_path):
    (joint,) = plan_steps(["joint"], tmp_path / "run", overrides=TINY)
    with pytest.raises(ValueError, match=r"step joint: train.init_from .*audio/best.pt does not exist"):
        preflight([joint], features)
    preflight(plan_steps(["audio", "joint"], tmp_path / "run", overrides=TINY), features)  # written by audio


def test_preflight_checks_the_selection_split(features, tmp_path):
    steps = plan_steps(["audio"], tmp_path / "run", overrides=TINY + ["train.validation=evaluate"])
    with pytest.raises(ValueError, match=r"train.validation 'evaluate' names no features split folder"):
        preflight(steps, features)


def test_preflight_refuses_a_split_folder_and_suggests_its_parent(features, tmp_path):
    steps = plan_steps(["audio"], tmp_path / "run", overrides=TINY)
    with pytest.raises(ValueError, match=r"this is a split folder; give its parent"):
        preflight(steps, features / "train")


def test_make_train_with_a_missing_weights_file_trains_nothing(features, tmp_path):
    run = tmp_path / "run"
    args = [str(features), str(run), "--steps", "audio,joint", "--device", "cpu", "--no-progress"]
    for o in TINY + ["model.video_weights=missing/densenet161_places365.pth.tar"]:
        args += ["--set", o]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 1
    assert "missing/densenet161_places365.pth.tar not found" in result.output
    assert not (run / "audio").exists()


def test_steps_run_in_order_and_a_rerun_keeps_finished_ones(features, tmp_path, caplog):
    run = tmp_path / "run"
    steps = plan_steps(["audio", "joint"], run, overrides=TINY)
    rows = run_steps(steps, features, device="cpu", progress=False)
    assert set(rows) == {"audio", "joint"} and (run / "joint" / "best.pt").is_file()
    assert load_recipe(run / "joint" / "config.yaml").train.init_from == str(run / "audio" / "best.pt")
    caplog.set_level("INFO")
    rows = run_steps(steps, features, device="cpu", progress=False)
    assert rows == {"audio": {"kept": True}, "joint": {"kept": True}}


def test_resume_ignores_fields_the_steps_model_never_reads(tmp_path):
    saved = load_recipe(None, ["model.modality=audio", "model.video_weights=a.pth"]).to_dict()
    audio = load_recipe(None, ["model.modality=audio", "model.video_weights=null", "batch_augment.video_num_ops=1"])
    assert run_config_diff(saved, audio) == []
    joint = load_recipe(None, ["model.modality=joint", "model.video_weights=null"])
    saved_joint = load_recipe(None, ["model.modality=joint", "model.video_weights=a.pth"]).to_dict()
    assert run_config_diff(saved_joint, joint) == ["model.video_weights: 'a.pth' != None"]
    video = load_recipe(None, ["model.modality=video", "model.audio_widths=[8, 8, 8]", "batch_augment.time_masks=3"])
    saved_video = load_recipe(None, ["model.modality=video"]).to_dict()
    assert run_config_diff(saved_video, video) == []


@pytest.mark.slow
def test_an_installed_wheel_reads_its_ablation_tables_from_another_folder(tmp_path):
    """`configs/` ships as package data: a wheel installed with `pip install --target`, run from
    another folder, finds the recipe's tables and steps."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(ROOT)], check=True)
    (wheel,) = wheel_dir.glob("*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import avsc_pipeline, avsc_pipeline.ablations as a, avsc_pipeline.recipe as r; "
            "assert 'site' in avsc_pipeline.__file__, avsc_pipeline.__file__; "
            "t = a.load_tables(); print(sorted(t), len(t[3]), (r.configs_dir() / 'steps' / 'audio.yaml').is_file())")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env={"PYTHONPATH": str(target), "PATH": ""},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "[1, 2, 3" in out.stdout and out.stdout.strip().endswith("True")
    shutil.rmtree(wheel_dir)
