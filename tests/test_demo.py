"""Tests for the synthetic teaching data set (avsc_pipeline.demo).

The teaching-point tests check the data set with an independent classifier (scikit-learn on
librosa log-mel means and PyAV-decoded colour statistics), not with the pipeline's own code.
"""

from __future__ import annotations

import csv
import pathlib
from fractions import Fraction

import numpy as np
import pytest

from avsc_pipeline.demo import AUDIO_PAIRS, VIDEO_PAIRS, DemoConfig, write_demo_dataset
from avsc_pipeline.corpus.tau import FOLD_HEADER, META_HEADER, TAU_CLASSES, TEST_HEADER

SMALL = DemoConfig(clips_per_class=2, duration=2.0)
TEACHING = DemoConfig(clips_per_class=4, duration=2.0)
Pairs = tuple[tuple[int, int], ...]


def _read_tsv(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    return rows[0], rows[1:]


def _decode_rgb(path: pathlib.Path) -> tuple[np.ndarray, object]:
    """Decode every frame; returns ``(T, H, W, 3) uint8`` and the video stream."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        info = (stream.codec_context.name, stream.average_rate, stream.codec_context.pix_fmt)
    return np.stack(frames), info


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_demo_dataset(tmp_path_factory.mktemp("small"), SMALL)


@pytest.fixture(scope="module")
def teaching_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return write_demo_dataset(tmp_path_factory.mktemp("teaching"), TEACHING)


# --------------------------------------------------------------------------- layout


def test_constants() -> None:
    assert TAU_CLASSES == tuple(sorted(TAU_CLASSES)) and len(TAU_CLASSES) == 10
    for pairs in (AUDIO_PAIRS, VIDEO_PAIRS):
        assert sorted(i for pair in pairs for i in pair) == list(range(10))
    # The two pairings share no pair, so (audio pair, video pair) identifies the class.
    assert not {frozenset(p) for p in AUDIO_PAIRS} & {frozenset(p) for p in VIDEO_PAIRS}
    combos = {(_pair_of(c, AUDIO_PAIRS), _pair_of(c, VIDEO_PAIRS)) for c in range(10)}
    assert len(combos) == 10


def test_layout_and_tables(small_root: pathlib.Path) -> None:
    header, meta = _read_tsv(small_root / "meta.csv")
    assert tuple(header) == META_HEADER
    assert len(meta) == 10 * SMALL.clips_per_class
    for audio, video, scene, identifier in meta:
        stem = pathlib.Path(audio).stem
        assert audio == f"audio/{stem}.wav" and video == f"video/{stem}.mp4"
        assert (small_root / audio).is_file() and (small_root / video).is_file()
        scene_part, city, location, _segment = stem.rsplit("-", 3)
        assert scene_part == scene and scene in TAU_CLASSES
        assert identifier == f"{city}-{location}"
    setup = small_root / "evaluation_setup"
    for name, expected in (
        ("fold1_train.csv", FOLD_HEADER),
        ("fold1_evaluate.csv", FOLD_HEADER),
        ("fold1_test.csv", TEST_HEADER),
    ):
        assert tuple(_read_tsv(setup / name)[0]) == expected
    assert not list(small_root.rglob("*.tmp"))


def test_wav_format(small_root: pathlib.Path) -> None:
    import soundfile

    for path in sorted((small_root / "audio").glob("*.wav")):
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (48000, 2, "PCM_16")
        assert info.frames == int(SMALL.duration * 48000)
        data, _ = soundfile.read(path, dtype="int16")
        left, right = data[:, 0].astype(float), data[:, 1].astype(float)
        assert not np.array_equal(left, right)
        # Related channels: the right one is the left one delayed by under 1 ms, plus noise.
        lags = range(48)
        best = max(np.corrcoef(left[: len(left) - d], right[d:])[0, 1] for d in lags)
        assert best > 0.5


def test_mp4_format_and_motion(small_root: pathlib.Path) -> None:
    import av

    path = sorted((small_root / "video").glob("*.mp4"))[0]
    frames, (codec, rate, pix_fmt) = _decode_rgb(path)
    assert (codec, rate, pix_fmt) == ("h264", Fraction(30), "yuv420p")
    assert frames.shape == (int(SMALL.duration * 30), SMALL.height, SMALL.width, 3)
    with av.open(str(path)) as container:
        assert not container.streams.audio
        times = [f.pts * f.time_base for f in container.decode(video=0)]
    assert times == [Fraction(i, 30) for i in range(len(frames))]
    step = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert step.min() > 0.5  # every frame differs from its neighbour


def test_folds_are_location_disjoint(small_root: pathlib.Path) -> None:
    _, meta = _read_tsv(small_root / "meta.csv")
    identifier = {row[0]: row[3] for row in meta}
    setup = small_root / "evaluation_setup"
    _, train = _read_tsv(setup / "fold1_train.csv")
    _, evaluate = _read_tsv(setup / "fold1_evaluate.csv")
    _, test = _read_tsv(setup / "fold1_test.csv")
    assert not {identifier[r[0]] for r in train} & {identifier[r[0]] for r in evaluate}
    assert test == [r[:2] for r in evaluate]
    assert sorted(train + evaluate) == sorted(r[:3] for r in meta)
    assert {r[2] for r in train} == {r[2] for r in evaluate} == set(TAU_CLASSES)


@pytest.mark.slow
def test_determinism(small_root: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import soundfile

    config = DemoConfig(clips_per_class=1, duration=2.0)
    first = write_demo_dataset(tmp_path / "a", config)
    second = write_demo_dataset(tmp_path / "b", config, progress=True)
    other_config = DemoConfig(clips_per_class=1, duration=2.0, seed=1)
    other = write_demo_dataset(tmp_path / "c", other_config)
    folds = ("train", "evaluate", "test")
    tables = ["meta.csv"] + [f"evaluation_setup/fold1_{fold}.csv" for fold in folds]
    for name in tables:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    # One clip per class means one location per class: all of them train.
    assert len(_read_tsv(first / tables[1])[1]) == 10 and not _read_tsv(first / tables[2])[1]
    for wav in sorted((first / "audio").glob("*.wav")):
        assert wav.read_bytes() == (second / "audio" / wav.name).read_bytes()
        assert wav.read_bytes() != (other / "audio" / wav.name).read_bytes()
        # A clip does not depend on how many clips are generated after it.
        bigger = small_root / "audio" / wav.name
        assert np.array_equal(soundfile.read(wav)[0], soundfile.read(bigger)[0])
    for mp4 in sorted((first / "video").glob("*.mp4"))[:3]:
        assert np.array_equal(_decode_rgb(mp4)[0], _decode_rgb(second / "video" / mp4.name)[0])


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("clips_per_class", 0, ValueError),
        ("duration", 0.5, ValueError),
        ("duration", 1.01, ValueError),  # not a whole number of frames
        ("seed", -1, ValueError),
        ("sample_rate", 16000, ValueError),
        ("width", 127, ValueError),
        ("height", 8, ValueError),
        ("fps", 0, ValueError),
        ("clips_per_class", 2.0, TypeError),
    ],
)
def test_config_validation(field: str, value: object, error: type) -> None:
    with pytest.raises(error, match="expected"):
        DemoConfig(**{field: value})


def test_write_rejects_bad_arguments(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TypeError, match="expected"):
        write_demo_dataset(tmp_path, config={"clips_per_class": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected"):
        write_demo_dataset(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- teaching point


def _pair_of(class_index: int, pairs: Pairs) -> int:
    return next(k for k, pair in enumerate(pairs) if class_index in pair)


def _audio_features(path: pathlib.Path) -> np.ndarray:
    """Mean log-mel per band, ``(128,)``, computed with librosa."""
    import librosa
    import soundfile

    data, sr = soundfile.read(path, dtype="float32")
    mel = librosa.feature.melspectrogram(
        y=data.mean(axis=1), sr=sr, n_fft=2048, hop_length=1024, n_mels=128
    )
    return librosa.power_to_db(mel, ref=1.0).mean(axis=1)


def _video_features(path: pathlib.Path) -> np.ndarray:
    """Mean and spatial spread of each colour channel over a clip, ``(6,)``."""
    frames = _decode_rgb(path)[0].astype(np.float64) / 255.0
    return np.concatenate([frames.mean(axis=(0, 1, 2)), frames.std(axis=(1, 2)).mean(axis=0)])


@pytest.fixture(scope="module")
def teaching_features(teaching_root: pathlib.Path) -> dict[str, np.ndarray]:
    _, meta = _read_tsv(teaching_root / "meta.csv")
    audio = np.stack([_audio_features(teaching_root / row[0]) for row in meta])
    video = np.stack([_video_features(teaching_root / row[1]) for row in meta])
    labels = np.array([TAU_CLASSES.index(row[2]) for row in meta])
    return {"audio": audio, "video": video, "labels": labels}


def _cv_predict(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    folds = StratifiedKFold(n_splits=TEACHING.clips_per_class)
    return cross_val_predict(model, features, labels, cv=folds)


def _scores(predicted: np.ndarray, labels: np.ndarray, pairs: Pairs) -> tuple[float, float, float]:
    """Class accuracy, pair accuracy, and class accuracy among right-pair predictions."""
    to_pair = np.array([_pair_of(c, pairs) for c in range(10)])
    right_pair = to_pair[predicted] == to_pair[labels]
    right_class = predicted == labels
    return right_class.mean(), right_pair.mean(), right_class[right_pair].mean()


@pytest.mark.slow
def test_audio_is_never_digitally_silent(teaching_features: dict[str, np.ndarray]) -> None:
    assert teaching_features["audio"].min() > -100.0  # dB; -inf would mean a silent band


@pytest.mark.slow
@pytest.mark.parametrize(("modality", "pairs"), [("audio", AUDIO_PAIRS), ("video", VIDEO_PAIRS)])
def test_single_modality_confuses_its_pairs(
    teaching_features: dict[str, np.ndarray], modality: str, pairs: Pairs
) -> None:
    labels = teaching_features["labels"]
    predicted = _cv_predict(teaching_features[modality], labels)
    accuracy, pair_accuracy, within_pair = _scores(predicted, labels, pairs)
    assert pair_accuracy >= 0.9, f"{modality} should separate its pairs"
    assert within_pair <= 0.75, f"{modality} should be near chance (0.5) within a pair"
    assert accuracy <= 0.75


@pytest.mark.slow
def test_audio_and_video_together_separate_all_classes(
    teaching_features: dict[str, np.ndarray],
) -> None:
    labels = teaching_features["labels"]
    both = np.concatenate([teaching_features["audio"], teaching_features["video"]], axis=1)
    accuracy = (_cv_predict(both, labels) == labels).mean()
    single = max(
        (_cv_predict(teaching_features[m], labels) == labels).mean() for m in ("audio", "video")
    )
    assert accuracy >= 0.9
    assert accuracy >= single + 0.2
