"""Table 4, beyond the paper: PANNs' CNN14 and CLIP in the recipe's joint step, each row beside
the later literature's figures; CNN14 rows read the waveform shards beside FEATURES."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from avsc_pipeline.ablations import Row, RowResult, load_tables, row_recipe, table_steps, write_table

INIT = Path("runs/audio/best.pt")
LITERATURE = ("95.3 % (Pham et al. 2023, development set); 93.8 %, log loss 0.195 (best DCASE 2021 Task 1b "
              "entry, evaluation set)")
CLIP = "timm:vit_base_patch16_clip_224.openai"


def resolved(row):
    return row_recipe(row, INIT if row.audio_step else None)


def test_table_4_has_the_five_rows_each_with_the_literature_figures():
    rows = load_tables()[4]
    assert [r.name for r in rows] == ["fcnn-densenet161", "cnn14-densenet161", "fcnn-clip", "cnn14-clip",
                                      "cnn14-clip-cached"]
    assert all(r.paper is None and r.reference == LITERATURE and r.step == "joint" for r in rows)
    models = {r.name: resolved(r).model for r in rows}
    assert [(m.audio, m.video) for m in models.values()] == [
        ("fcnn", "densenet161"), ("panns_cnn14", "densenet161"), ("fcnn", CLIP), ("panns_cnn14", CLIP),
        ("panns_cnn14", CLIP)]
    for row in rows:
        model, train, augment = models[row.name], resolved(row).train, resolved(row).batch_augment
        cnn14 = model.audio == "panns_cnn14"
        assert (row.features == "{features}-waveform") == cnn14 and (row.audio_step is None) == cnn14, row.name
        assert model.audio_weights == ("data/weights/Cnn14_mAP=0.431.pth" if cnn14 else None)
        assert train.init_from == (None if cnn14 else str(INIT))
        if model.video == CLIP:
            assert model.video_weights == "data/weights/vit_base_patch16_clip_224.openai.bin"
        cached = row.name == "cnn14-clip-cached"
        assert (train.freeze_audio, train.freeze_video, train.cache_embeddings) == (cached, cached, True)
        if cached:  # nothing augments a cached extractor's input
            assert not augment.spec_augment and augment.channel_swap_p == 0 and augment.video_num_ops == 0
            assert augment.mixup_fraction == 0
        else:  # the recipe's joint step: Table 3's final system
            assert augment.spec_augment and augment.channel_swap_p == 0.5 and augment.video_num_ops == 2
            assert augment.mixup_fraction == 0.2 and augment.mixup_ratio == 0.4
            assert (train.optimizer, train.lr) == ("adam", 1e-5) and resolved(row).loader.aug_fraction == 0


def test_cnn14_rows_read_the_waveform_folder_beside_features(tmp_path):
    rows = load_tables()[4]
    audio_steps, steps = table_steps(4, rows, tmp_path / "run", features=Path("data/features"))
    assert list(audio_steps) == ["augmented"]
    assert {name: step.features for name, step in steps.items()} == {
        "fcnn-densenet161": None, "cnn14-densenet161": Path("data/features-waveform"), "fcnn-clip": None,
        "cnn14-clip": Path("data/features-waveform"), "cnn14-clip-cached": Path("data/features-waveform")}


def test_the_table_shows_the_literature_instead_of_a_paper_figure(tmp_path):
    row = Row(name="cnn14-clip", label="CNN14 + CLIP", step="joint", reference=LITERATURE)
    write_table(4, [RowResult(row, accuracy=0.9, log_loss=0.3, status="scored")], tmp_path)
    text = (tmp_path / "table-4.md").read_text()
    assert "| row | literature |" in text and f"| CNN14 + CLIP | {LITERATURE} | 90.0 % | - | 0.300 | - |" in text
    with pytest.raises(ValueError, match="expected the paper's accuracy or a reference figure, got neither"):
        from avsc_pipeline.ablations import _check_row

        _check_row(Row(name="x", label="x", step="audio"), "here")


@pytest.mark.slow
def test_the_plan_of_table_4_lists_the_five_rows(tmp_path):
    from avsc_pipeline.sections.features import FeatureConfig
    from avsc_pipeline.testing import write_random_folder
    from avsc_pipeline_cli.ablations import main

    features, run = tmp_path / "features", tmp_path / "run"
    small = FeatureConfig(n_mels=32, image_size=32)
    write_random_folder(features / "train", [40], small, classes=["a", "b"])
    # 15360 samples at 48 kHz: 10240 at 32 kHz, 33 frames of the front end (CNN14's fewest)
    waveform = FeatureConfig(n_mels=32, image_size=32, audio="waveform", segment_samples=15360)
    write_random_folder(tmp_path / "features-waveform" / "train", [40], waveform, classes=["a", "b"])
    toy = tmp_path / "toy.yaml"  # random weights, small video and head: the machinery, not the figures
    toy.write_text("features: {n_mels: 32, image_size: 32}\n"
                   "model: {audio_widths: [8, 8, 8], audio_weights: null, video: small_cnn, video_weights: null, "
                   "fusion_hidden: [16]}\n"
                   "loader: {batch_size: 4, num_workers: 0, audio_stats: stats.json}\ntrain: {epochs: 1}\n")
    result = CliRunner().invoke(main, ["4", str(features), str(run), "--config", str(toy), "--plan",
                                       "--probe-steps", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    names = [line.split("|")[1].strip() for line in result.output.splitlines() if line.startswith("| ")]
    for name in ("audio-augmented", "fcnn-densenet161", "cnn14-densenet161", "fcnn-clip", "cnn14-clip",
                 "cnn14-clip-cached"):
        assert name in names, result.output
    assert not run.exists() or not list(run.rglob("*.pt"))
