"""Beyond the paper on the CPU at toy size: PANNs' CNN14 on waveform shards with CLIP video.

A joint CNN14 + CLIP model fine-tunes both extractors for a few steps from release-shaped weight
files with the recipe's batch augmentation, `--resume` ends with exactly the weights of an
uninterrupted run (CNN14 fine-tuned, CLIP frozen behind its embedding cache: a fine-tuned ViT-B
step takes about 25 s on a busy 2-core CPU), frozen training keeps every CNN14 tensor of a file
shaped like `Cnn14_mAP=0.431.pth`, and a file missing one tensor is refused by name before
anything is written. The inputs are small where the models allow: 10240-sample waveforms (33
frames of the front end, the fewest CNN14's pooling takes) and a few rows; CLIP's ViT needs its
224x224 frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from avsc_pipeline.models.checkpoint import load_checkpoint  # noqa: E402
from avsc_pipeline.sections import load_recipe  # noqa: E402
from avsc_pipeline.sections.features import FeatureConfig  # noqa: E402
from avsc_pipeline.storage.index import build_index  # noqa: E402
from avsc_pipeline.storage.shards import ShardWriter, shard_attrs, shard_name, stage_one_columns  # noqa: E402
from avsc_pipeline.training.run import train_run  # noqa: E402

pytestmark = pytest.mark.slow

# 15360 samples at 48 kHz -> 10240 at 32 kHz -> 33 frames of the front end
FEATURES = FeatureConfig(audio="waveform", segment_samples=15360)
CLASSES = ["park", "tram"]
CLIP = "timm:vit_base_patch16_clip_224.openai"


def waveform_folder(folder: Path, rows: int, seed: int) -> Path:
    """`rows` rows, one per clip and location, labels alternating; a tone per class in the audio."""
    rng = np.random.default_rng(seed)
    label = (np.arange(rows) % 2).astype(np.int16)
    t = np.arange(FEATURES.waveform_samples) / FEATURES.waveform_rate
    tone = np.stack([np.sin(2 * np.pi * (500 + 1500 * k) * t) for k in range(2)])
    audio = 0.05 * rng.standard_normal((rows,) + FEATURES.audio_shape) + 0.3 * tone[label][:, None, :]
    columns = dict(audio=audio.astype(np.float32),
                   video=rng.integers(0, 256, (rows,) + FEATURES.video_shape, dtype=np.uint8), label=label,
                   clip_id=[f"s{seed}-{i}" for i in range(rows)], segment=np.zeros(rows, np.int16),
                   identifier=[f"s{seed}-loc{i}" for i in range(rows)], variant=["orig"] * rows,
                   audio_file=[f"audio/{i}.wav" for i in range(rows)], video_file=[f"video/{i}.mp4" for i in range(rows)])
    folder.mkdir(parents=True)
    with ShardWriter(folder / shard_name(0), stage_one_columns(FEATURES), shard_attrs(CLASSES, FEATURES, "w")) as w:
        w.add(**columns)
    build_index(folder)
    return folder


def release_cnn14(seed: int = 0):
    """A state dict with the key names and shapes of PANNs' `Cnn14_mAP=0.431.pth`, random values."""
    import librosa

    from avsc_pipeline.models.cnn14 import Cnn14

    torch.manual_seed(seed)
    state = {k: (v.clone() if k.endswith("num_batches_tracked") else torch.randn_like(v) * 0.05)
             for k, v in Cnn14().state_dict().items()}
    state.update({k: torch.rand_like(v) + 0.5 for k, v in state.items() if k.endswith("running_var")})
    mel = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64, fmin=50.0, fmax=14000.0, htk=False, norm="slaney")
    state.update({"spectrogram_extractor.stft.conv_real.weight": torch.zeros(513, 1, 1024),
                  "spectrogram_extractor.stft.conv_imag.weight": torch.zeros(513, 1, 1024),
                  "logmel_extractor.melW": torch.from_numpy(mel.T.copy()),
                  "fc_audioset.weight": torch.zeros(527, 2048), "fc_audioset.bias": torch.zeros(527)})
    return state


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Waveform features (train: 4 rows, evaluate: 2) and the two weights files."""
    import timm

    root = tmp_path_factory.mktemp("beyond")
    waveform_folder(root / "features" / "train", 4, seed=0)
    waveform_folder(root / "features" / "evaluate", 2, seed=1)
    weights = root / "weights"
    weights.mkdir()
    cnn14 = release_cnn14()
    torch.save({"model": cnn14}, weights / "Cnn14_mAP=0.431.pth")
    torch.manual_seed(1)
    clip = timm.create_model("vit_base_patch16_clip_224.openai", pretrained=False).state_dict()
    torch.save(clip, weights / "vit_base_patch16_clip_224.openai.pth")
    return root / "features", weights, cnn14


def recipe(weights: Path, *overrides: str):
    return load_recipe(None, [
        "model.modality=joint", "model.audio=panns_cnn14", f"model.audio_weights={weights / 'Cnn14_mAP=0.431.pth'}",
        f"model.video={CLIP}", f"model.video_weights={weights / 'vit_base_patch16_clip_224.openai.pth'}",
        "model.fusion_hidden=[16]", "loader.batch_size=2", "loader.num_workers=0", "train.optimizer=adam",
        "train.lr=0.0001", "train.weight_decay=0", "train.scheduler=none", "train.validation=evaluate",
        "train.deterministic=true", "batch_augment.video_num_ops=0", *overrides])


def weights_of(path: Path):
    return load_checkpoint(path).artifact.weights


def test_a_joint_cnn14_clip_model_fine_tunes_both_extractors(setup, tmp_path):
    features, weights, cnn14 = setup
    run = tmp_path / "run"
    augment = ["batch_augment.video_num_ops=2", "batch_augment.mixup_fraction=1.0", "batch_augment.channel_swap_p=0.5"]
    row = train_run(features, run, recipe(weights, "train.epochs=1", *augment), device="cpu", progress=False)
    assert row["epoch"] == 1 and np.isfinite(float(row["train_loss"])) and row["val_log_loss"] is not None
    checkpoint = load_checkpoint(run / "last.pt")
    artifact = checkpoint.artifact
    assert artifact.recipe.model.audio == "panns_cnn14" and artifact.recipe.features == FEATURES
    assert checkpoint.resume.step == 2 and set(artifact.embedding_means) == {"audio", "video"}
    assert artifact.embedding_means["audio"].shape == (2048,) and artifact.embedding_means["video"].shape == (512,)
    clip = torch.load(weights / "vit_base_patch16_clip_224.openai.pth", weights_only=True)
    assert not torch.equal(artifact.weights["audio.backbone.conv_block1.conv1.weight"], cnn14["conv_block1.conv1.weight"])
    assert not torch.equal(artifact.weights["video.backbone.blocks.0.attn.qkv.weight"], clip["blocks.0.attn.qkv.weight"])


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(setup, tmp_path):
    features, weights, _ = setup
    cached = ["train.freeze_video=true", "train.cache_embeddings=true", "batch_augment.mixup_fraction=0"]
    straight = tmp_path / "straight"
    train_run(features, straight, recipe(weights, "train.epochs=2", *cached), device="cpu", progress=False)
    expected = weights_of(straight / "last.pt")
    resumed = tmp_path / "resumed"
    train_run(features, resumed, recipe(weights, "train.epochs=1", *cached), device="cpu", progress=False)
    train_run(features, resumed, recipe(weights, "train.epochs=2", *cached), resume=True, device="cpu",
              progress=False)
    after = weights_of(resumed / "last.pt")
    assert after.keys() == expected.keys() and load_checkpoint(resumed / "last.pt").resume.step == 4
    for key, tensor in expected.items():
        assert torch.equal(tensor, after[key]), key


def test_frozen_training_keeps_every_cnn14_tensor_of_the_release_file(setup, tmp_path):
    features, weights, cnn14 = setup
    run = tmp_path / "frozen"
    train_run(features, run, recipe(weights, "train.epochs=1", "train.freeze_audio=true", "train.freeze_video=true",
                                    "batch_augment.spec_augment=false", "batch_augment.channel_swap_p=0",
                                    "batch_augment.mixup_fraction=0"), device="cpu", progress=False)
    saved = weights_of(run / "best.pt")
    backbone = {k[len("audio.backbone."):]: v for k, v in saved.items() if k.startswith("audio.backbone.")}
    assert len(backbone) == 79
    for name, tensor in backbone.items():
        assert torch.equal(tensor, cnn14[name]), name


def test_a_cnn14_file_missing_a_tensor_is_refused_and_nothing_is_written(setup, tmp_path):
    features, weights, cnn14 = setup
    broken = tmp_path / "weights"
    broken.mkdir()
    torch.save({"model": {k: v for k, v in cnn14.items() if k != "conv_block3.bn1.running_mean"}},
               broken / "Cnn14_mAP=0.431.pth")
    (broken / "vit_base_patch16_clip_224.openai.pth").symlink_to(weights / "vit_base_patch16_clip_224.openai.pth")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"missing from the file: conv_block3\.bn1\.running_mean"):
        train_run(features, run, recipe(broken, "train.epochs=1"), device="cpu", progress=False)
    assert not run.exists() or not any(run.iterdir())
