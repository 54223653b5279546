"""The paper's ablation rows: every row resolves to a config that meets what the paper states for
it (PAPER.md), and a table runs end to end at toy size, keeping finished rows on a rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from avsc_pipeline.ablations import (
    AUDIO_STEPS, audio_step_sections, layered_recipe, load_tables, row_recipe,
)

ROOT = Path(__file__).resolve().parents[1]
INIT = Path("runs/audio/best.pt")
TABLE_2_OPS = {"TranslateX", "TranslateY", "Solarize", "ShearX", "ShearY", "Sharpness", "Posterize", "Equalize",
               "Cutout", "Contrast", "Color", "Brightness", "AutoContrast", "Rotate", "Invert"}


def resolved(row):
    if row.score == "audio_step":  # the row is the audio step's own model
        return layered_recipe("audio", audio_step_sections(row.audio_step))
    return row_recipe(row, INIT if row.step == "joint" else None)


def no_audio_augmentation(sections) -> bool:
    augment, loader = sections.batch_augment, sections.loader
    return (not augment.spec_augment and augment.channel_swap_p == 0 and augment.mixup_fraction == 0
            and loader.aug_fraction == 0)


def test_every_table_has_the_papers_rows_and_figures():
    tables = load_tables()
    assert [len(tables[n]) for n in (1, 2, 3)] == [11, 16, 7]
    assert {r.label for r in tables[2]} - {"none"} == TABLE_2_OPS
    assert next(r for r in tables[3] if r.name == "mixup-20").paper == 94.2
    assert [r.name for r in tables[1] if not r.reproducible] == ["vggish"]


def test_the_audio_steps():
    plain = layered_recipe("audio", audio_step_sections("plain"))
    augmented = layered_recipe("audio", audio_step_sections("augmented"))
    assert no_audio_augmentation(plain) and plain.model.modality == "audio"
    train, augment = augmented.train, augmented.batch_augment
    assert (train.epochs, train.optimizer, train.lr, train.momentum, train.weight_decay) == (254, "sgd", 0.1, 0.9, 0.0)
    assert train.restart_epochs[:6] == (3, 7, 15, 31, 63, 127) and train.min_lr == 1e-5
    assert augment.mixup_fraction == 1.0 and augment.mixup_alpha == 0.4 and augment.channel_swap_p > 0
    assert augment.mask_per_channel and augment.mask_fill == "zero" and augment.max_mask_fraction == 0.1
    assert augmented.loader.aug_fraction == 1.0 and set(AUDIO_STEPS) == {"plain", "augmented"}


def test_table_1_rows_have_no_augmentation_and_the_papers_extractors_and_flags():
    for row in load_tables()[1]:
        if not row.reproducible:
            continue
        sections = resolved(row)
        model, train = sections.model, sections.train
        assert no_audio_augmentation(sections) and sections.batch_augment.video_num_ops == 0, row.name
        assert row.audio_step == (None if row.step == "video" else "plain") and model.modality == row.step, row.name
        if row.step == "joint":
            assert train.init_from == str(INIT)
            fine_a, fine_v = not train.freeze_audio, not train.freeze_video
            expected = {"fine-a": (True, False), "fine-v": (False, True), "fine-av": (True, True)}.get(row.name,
                                                                                                       (False, False))
            assert (fine_a, fine_v) == expected, row.name
        if row.name.startswith("vgg19") or row.name == "fcnn-vgg19":
            assert model.video == "vgg19" and (model.video_weights is None) == (row.name == "vgg19-scratch")
    names = {row.name: resolved(row).model for row in load_tables()[1] if row.reproducible}
    assert names["fcnn-resnet50"].video == "resnet50" and "places365" in names["fcnn-resnet50"].video_weights
    assert names["fcnn-densenet161"].video == "densenet161" and "places365" in names["fcnn-densenet161"].video_weights
    assert names["fcnn-resnest50"].video == "timm:resnest50d"


def test_table_2_rows_apply_one_operation_at_half_probability_without_audio_augmentation():
    for row in load_tables()[2]:
        sections = resolved(row)
        augment, train = sections.batch_augment, sections.train
        assert no_audio_augmentation(sections) and row.audio_step == "plain" and row.step == "joint"
        assert not train.freeze_audio and not train.freeze_video  # both fine-tuned
        if row.name == "none":
            assert augment.video_num_ops == 0
        else:
            assert (augment.video_ops, augment.video_num_ops, augment.video_magnitude) == (("Identity", row.label), 1, 14)


def test_table_3_rows_switch_exactly_what_the_paper_switches():
    rows = {row.name: (row, resolved(row)) for row in load_tables()[3]}
    for name, (row, sections) in rows.items():
        augment = sections.batch_augment
        audio = "audio" in name or name.startswith("mixup")
        video = "video" in name or name.startswith("mixup")
        assert row.audio_step == ("augmented" if audio else "plain"), name
        assert (augment.spec_augment and augment.channel_swap_p > 0) == audio, name
        assert (augment.video_num_ops == 2 and augment.video_ops == ("Identity", "Sharpness", "Contrast")) == video
        assert sections.loader.aug_fraction == 0.0 and not sections.train.freeze_audio
        expected_mixup = {"mixup-20": 0.2, "mixup-50": 0.5, "mixup-100": 1.0}.get(name, 0.0)
        assert augment.mixup_fraction == expected_mixup and (not expected_mixup or augment.mixup_ratio == 0.4)


@pytest.mark.slow
def test_a_table_runs_at_toy_size_and_a_rerun_keeps_finished_rows(tmp_path, caplog):
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "training"))
    from test_trainer import make_features  # noqa: E402 - the trainer tests' learnable toy shards

    from avsc_pipeline.ablations import run_table

    features = make_features(tmp_path / "features")
    import shutil

    shutil.copytree(features / "train", features / "evaluate")
    toy = tmp_path / "toy.yaml"
    toy.write_text("features: {n_mels: 32, image_size: 32}\n"
                   "model: {audio_widths: [8, 8, 8], video: small_cnn, video_weights: null, fusion_hidden: [16]}\n"
                   "loader: {batch_size: 8, num_workers: 0, audio_stats: stats.json}\n"
                   "train: {epochs: 1, lr: 0.003}\n")
    results = run_table(3, features, tmp_path / "run", rows=["none", "mixup-20"], extra=[toy], device="cpu")
    assert [r.status for r in results] == ["scored", "scored"]
    table = (tmp_path / "run" / "table-3.md").read_text()
    assert "94.2 %" in table and "no augmentation" in table
    assert (tmp_path / "run" / "audio-plain" / "best.pt").is_file() and (tmp_path / "run" / "audio-augmented").is_dir()
    caplog.set_level("INFO")
    run_table(3, features, tmp_path / "run", rows=["none"], extra=[toy], device="cpu")
    assert "holds a finished run, kept" in caplog.text
