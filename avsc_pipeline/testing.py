"""Small media and shard builders for tests and benchmarks (everything is made in a given folder).

Kept in the library, as lhotse does, so every test and benchmark builds its own data.
:data:`SMALL_FEATURES` is the stage-one config with 32x32 frames that keeps shard tests fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import numpy as np

from avsc_pipeline.sections.features import FeatureConfig

if TYPE_CHECKING:
    from avsc_pipeline.features.offline_augment import DspImplementation
from avsc_pipeline.corpus.clips import write_tsv
from avsc_pipeline.corpus.tau import FOLD_HEADER, META_HEADER, TAU_CLASSES, TEST_HEADER

SMALL_FEATURES = FeatureConfig(image_size=32)


def noisy_tone(seconds: float, sr: int = 48000, freq: float = 440.0, noise: float = 1e-3,
               seed: int = 0, channels: int = 2) -> np.ndarray:
    """A tone plus white noise, float32 `(channels, n)`; the noise keeps every mel band above
    float32 rounding so fast and reference features are comparable."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    rows = [
        0.3 * (0.7 ** c) * np.sin(2 * np.pi * freq * (1 + 0.1 * c) * t) + noise * rng.standard_normal(t.size)
        for c in range(channels)
    ]
    return np.stack(rows).astype(np.float32)


def write_wav(path: "str | os.PathLike[str]", audio: np.ndarray, sr: int = 48000, subtype: str = "PCM_16") -> Path:
    """Write `(channels, n)` float audio as a WAV file."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(audio).T, sr, subtype=subtype)
    return path


def frame_pattern(index: int, height: int, width: int) -> np.ndarray:
    """RGB frame `(H, W, 3)` uint8 whose mean brightness encodes `index` (0..255 levels apart by 1).

    Each frame has a distinct flat grey level `(index * 7) % 256` in the red channel and
    `index // 37` in green, so decoded frames can be matched to their index even after lossy
    compression (levels are compared with a tolerance).
    """
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[..., 0] = (index * 7) % 256
    frame[..., 1] = min(255, (index // 37) * 32)
    frame[..., 2] = 128
    return frame


def write_video(path: "str | os.PathLike[str]", n_frames: int, fps: int = 30, width: int = 64,
                height: int = 48, pattern=frame_pattern) -> Path:
    """Write an H.264 MP4 with `n_frames` frames at `fps`, frame i = `pattern(i, height, width)`."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast", "g": "60"}
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_tau_dataset(root: "str | os.PathLike[str]", n_clips: int = 4, seconds: float = 3.0, fps: int = 30,
                     classes: Sequence[str] = TAU_CLASSES, sr: int = 48000,
                     video_seconds: Optional[float] = None) -> Path:
    """A tiny data set in the TAU layout: `n_clips` clips cycling through `classes`.

    Clip i is `<class>-city<i % 3>-<100 + i>-<i>`; fold1 train gets even clips, evaluate odd ones.
    """
    root = Path(root)
    rows: List[List[str]] = []
    for i in range(n_clips):
        label = classes[i % len(classes)]
        stem = f"{label}-city{i % 3}-{100 + i}-{i}"
        write_wav(root / "audio" / f"{stem}.wav", noisy_tone(seconds, sr, 300.0 + 50 * i, seed=i), sr)
        vid_s = seconds if video_seconds is None else video_seconds
        write_video(root / "video" / f"{stem}.mp4", int(round(vid_s * fps)), fps)
        rows.append([f"audio/{stem}.wav", f"video/{stem}.mp4", label, f"city{i % 3}-{100 + i}"])
    write_tsv(root / "meta.csv", META_HEADER, rows)
    setup = root / "evaluation_setup"
    write_tsv(setup / "fold1_train.csv", FOLD_HEADER, [r[:3] for r in rows[0::2]])
    write_tsv(setup / "fold1_evaluate.csv", FOLD_HEADER, [r[:3] for r in rows[1::2]])
    write_tsv(setup / "fold1_test.csv", TEST_HEADER, [r[:2] for r in rows[1::2]])
    return root


def write_random_shard(path: "str | os.PathLike[str]", n_rows: int, config: FeatureConfig = FeatureConfig(),
                       classes: Sequence[str] = TAU_CLASSES, seed: int = 0,
                       identifiers: int = 4, with_video: bool = True) -> Path:
    """A shard of random features in the stage-one schema (10 segments per clip).

    Labels cycle over clips; identifiers cycle over `identifiers` locations per class.
    """
    from avsc_pipeline.storage.shards import ORIGINAL_VARIANT, ShardWriter, shard_attrs, stage_one_columns

    rng = np.random.default_rng(seed)
    clip = np.arange(n_rows) // 10
    label = (clip % len(classes)).astype(np.int16)
    columns = dict(
        audio=rng.standard_normal((n_rows,) + config.audio_shape).astype(config.audio_dtype),
        label=label,
        clip_id=[f"s{seed}-clip{c}" for c in clip],
        segment=(np.arange(n_rows) % 10).astype(np.int16),
        identifier=[f"loc{seed}-{label[i]}-{clip[i] % identifiers}" for i in range(n_rows)],
        variant=[ORIGINAL_VARIANT] * n_rows,
        audio_file=[f"audio/s{seed}-clip{c}.wav" for c in clip],
    )
    if with_video:
        columns["video"] = rng.integers(0, 256, (n_rows,) + config.video_shape, dtype=np.uint8)
        columns["video_file"] = [f"video/s{seed}-clip{c}.mp4" for c in clip]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(path, stage_one_columns(config, with_video), shard_attrs(classes, config, f"random{seed}")) as w:
        w.add(**columns)
    return path


def write_random_folder(folder: "str | os.PathLike[str]", sizes: Sequence[int] = (20, 30),
                        config: FeatureConfig = FeatureConfig(), **kwargs) -> Path:
    """A stage-one folder with an index: shard `k` holds `sizes[k]` random rows made with seed `k`.

    Other keyword arguments go to :func:`write_random_shard` (e.g. `classes`, `with_video`).
    """
    from avsc_pipeline.storage.index import build_index
    from avsc_pipeline.storage.shards import shard_name

    folder = Path(folder)
    for number, rows in enumerate(sizes):
        write_random_shard(folder / shard_name(number), rows, config, seed=number, **kwargs)
    build_index(folder)
    return folder


def write_augmented_folder(folder: "str | os.PathLike[str]", source: "str | os.PathLike[str]",
                           config: FeatureConfig = FeatureConfig(), rows: int = 12, seed: int = 7,
                           bad_reference: bool = False) -> Path:
    """A `train-aug` folder in the augmented schema whose rows refer to `source`'s frames.

    Its `rows` rows take label, clip, identifier and video reference from random rows of
    `source`'s first shard (`video_source` = `../train`); with `bad_reference` the 4th row
    refers to a clip that does not exist.
    """
    from avsc_pipeline.storage.columns import read_columns
    from avsc_pipeline.storage.index import build_index
    from avsc_pipeline.storage.shards import (
        AUGMENT_VARIANTS, ShardWriter, augment_columns, list_shards, shard_attrs, shard_name,
    )

    folder = Path(folder)
    original = read_columns(list_shards(source)[0], ("label", "clip_id", "segment", "identifier"))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(original["clip_id"]), rows, replace=False)
    clips = original["clip_id"][pick].tolist()
    if bad_reference:
        clips[3] = "no-such-clip"
    nan = np.full(rows, np.nan, dtype=np.float32)
    variants = [AUGMENT_VARIANTS[k % len(AUGMENT_VARIANTS)] for k in range(rows)]
    # A `mix` row names its partner: another clip of its class, as the offline augmentation draws.
    partners, draw = [""] * rows, np.random.default_rng([seed, 1])
    for k in range(rows):
        own = str(original["clip_id"][pick[k]])
        if variants[k] == "mix":
            same = sorted({str(c) for c, label in zip(original["clip_id"], original["label"])
                           if label == original["label"][pick[k]] and c != own})
            partners[k] = same[int(draw.integers(len(same)))] if same else own
    columns = dict(
        audio=rng.standard_normal((rows,) + config.audio_shape).astype(config.audio_dtype),
        label=original["label"][pick], clip_id=original["clip_id"][pick], segment=np.arange(rows) % 10,
        identifier=original["identifier"][pick], variant=variants,
        audio_file=[f"audio/{c}.wav" for c in original["clip_id"][pick]], video_ref_clip=clips, video_ref_segment=original["segment"][pick],
        copy=np.zeros(rows, np.int16), semitones=nan, speed=nan, snr_db=nan, gain=nan, partner_clip=partners,
    )
    folder.mkdir(parents=True)
    attrs = shard_attrs(TAU_CLASSES, config, "aug", video_source="../train")
    with ShardWriter(folder / shard_name(0), augment_columns(config), attrs) as writer:
        writer.add(**columns)
    build_index(folder)
    return folder


def write_test_checkpoint(path: "str | os.PathLike[str]", folder: "str | os.PathLike[str]",
                          model_config: "Optional[ModelConfig]" = None, modality: str = "joint", seed: int = 0,
                          embedding_means: bool = True, loader: "Optional[LoaderConfig]" = None,
                          logit_scale: float = 8.0) -> Path:
    """Save a randomly initialized model for the shards of `folder` as a checkpoint, through the
    trainer's own writer (:func:`avsc_pipeline.models.checkpoint.save_checkpoint`).

    Args:
        path: the checkpoint file to write (its folder is created).
        folder: an indexed shard folder; its class list, feature config and audio statistics
            go into the checkpoint.
        model_config: the architecture (default: a tiny FCNN (8, 8, 8) and the small CNN);
            its `modality` is replaced by `modality`.
        modality: `audio`, `video` or `joint`.
        seed: seeds the weights, the BatchNorm statistics and the mean embeddings.
        embedding_means: store random training-set mean embeddings (joint models only).
        loader: the `loader:` section (default: batch 8, no workers).
        logit_scale: multiplies the logits, so that a random model's probabilities are far from
            uniform (scores then differ between classes and rows).

    Returns:
        `path` as a Path.
    """
    import dataclasses

    import torch

    from avsc_pipeline.config import to_dict
    from avsc_pipeline.sections.loading import LoaderConfig
    from avsc_pipeline.dataio.stats import compute_audio_stats
    from avsc_pipeline.models.checkpoint import ModelArtifact, save_checkpoint
    from avsc_pipeline.models.classifier import build_model
    from avsc_pipeline.sections.model import ModelConfig
    from avsc_pipeline.storage.index import load_index

    model_config = model_config or ModelConfig(audio_widths=(8, 8, 8), video="small_cnn", fusion_hidden=(16,))
    model_config = dataclasses.replace(model_config, modality=modality)
    index = load_index(folder)
    classes = list(index["classes"])
    torch.manual_seed(seed)
    model = build_model(model_config, len(classes), load_weights=False)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            # Statistics other than (0, 1), so that eval-mode normalization matters.
            module.running_mean.normal_(0.0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    _spread_logits(model, logit_scale)
    means = None
    if modality == "joint" and embedding_means:
        means = {"audio": torch.randn(model.audio.embed_dim, generator=generator),
                 "video": torch.randn(model.video.embed_dim, generator=generator)}
    loader = loader or LoaderConfig(batch_size=8, num_workers=0)
    artifact = ModelArtifact(
        weights=model.state_dict(), classes=classes,
        config={"model": to_dict(model_config), "loader": to_dict(loader), "features": index["feature_config"]},
        audio_stats=compute_audio_stats(folder).to_json(), embedding_means=means,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, artifact)
    return path


def _spread_logits(model: "torch.nn.Module", scale: float) -> None:
    import torch

    with torch.no_grad():
        if model.head is not None:
            model.head[-1].weight.mul_(scale)
            model.head[-1].bias.mul_(scale)
        else:  # the FCNN's logits are its last BatchNorm's output, attended and pooled
            model.audio.head_bn2.running_var.div_(scale ** 2)


# -- the librosa effects: the reference the offline augmentation's fast DSP is compared with ----


def librosa_dsp() -> "DspImplementation":
    """librosa's pitch shift, time stretch and resampling as a
    :class:`~avsc_pipeline.features.offline_augment.DspImplementation`, for tests and benchmarks
    (`Augmenter(..., dsp=librosa_dsp())`)."""
    from avsc_pipeline.features.offline_augment import DspImplementation

    return DspImplementation(librosa_pitch_shift, librosa_change_tempo, librosa_change_speed, analysis=False)


def librosa_pitch_shift(audio: np.ndarray, sr: int, semitones: float, *, n_fft: int = 2048,
                         hop_length: int = 512, quality: str = "HQ", analysis: Any = None) -> np.ndarray:
    import librosa

    out = librosa.effects.pitch_shift(audio, sr=sr, n_steps=float(semitones), n_fft=n_fft,
                                      hop_length=hop_length, res_type=f"soxr_{quality.lower()}")
    return np.ascontiguousarray(out, dtype=np.float32)


def librosa_change_tempo(audio: np.ndarray, rate: float, *, n_fft: int = 2048, hop_length: int = 512,
                          analysis: Any = None) -> np.ndarray:
    import librosa

    out = librosa.effects.time_stretch(audio, rate=float(rate), n_fft=n_fft, hop_length=hop_length)
    from avsc_pipeline.features.offline_augment import repeat_to_length

    return repeat_to_length(np.asarray(out, dtype=np.float32), audio.shape[-1])


def librosa_change_speed(audio: np.ndarray, sr: int, factor: float, *, quality: str = "HQ") -> np.ndarray:
    import librosa

    out = librosa.resample(audio, orig_sr=sr, target_sr=sr / float(factor), res_type=f"soxr_{quality.lower()}")
    from avsc_pipeline.features.offline_augment import fix_length

    return fix_length(np.asarray(out, dtype=np.float32), int(round(audio.shape[-1] / factor)))
