"""A small synthetic teaching data set in the TAU Urban Audio-Visual Scenes 2021 layout.

The generated set has the layout of the TAU Urban Audio-Visual Scenes 2021 development set
(DCASE 2021 Task 1b)::

    OUT/audio/<scene>-<city>-<location>-<segment>.wav   48 kHz, stereo, 16-bit PCM
    OUT/video/<scene>-<city>-<location>-<segment>.mp4   H.264, yuv420p, 30 fps, no audio
    OUT/meta.csv                                         filename_audio, filename_video,
                                                         scene_label, identifier
    OUT/evaluation_setup/fold1_train.csv                 filename_audio, filename_video,
                                                         scene_label
    OUT/evaluation_setup/fold1_evaluate.csv              same columns as fold1_train.csv
    OUT/evaluation_setup/fold1_test.csv                  filename_audio, filename_video

All CSV files are tab-separated; paths are relative to ``OUT``; the identifier is
``<city>-<location>`` and train and evaluate share no identifier (location-disjoint folds).

The teaching point is the one the audio-visual paper makes: each modality alone confuses
some classes, and only the two together separate all ten. The classes are indexed as in
``TAU_CLASSES`` (alphabetical), and

* the audio of each class is drawn from one of five audio signatures, each shared by a pair of
  classes (``AUDIO_PAIRS``)::

      (0, 1) airport / bus            (2, 3) metro / metro_station
      (4, 5) park / public_square     (6, 7) shopping_mall / street_pedestrian
      (8, 9) street_traffic / tram

* the video of each class is drawn from one of five visual signatures, each shared by a
  different pair of classes (``VIDEO_PAIRS``)::

      (1, 2) bus / metro              (3, 4) metro_station / park
      (5, 6) public_square / shopping_mall
      (7, 8) street_pedestrian / street_traffic
      (9, 0) tram / airport

Within a pair the two classes are statistically identical in that modality (same generator,
same parameter distribution), so a classifier on that modality alone is at chance within the
pair; the pair (audio signature, video signature) identifies the class uniquely.

Audio signatures are band-limited noise with a signature-specific centre frequency and
bandwidth, signature-specific tones and amplitude-modulation rate, random per-clip gain and
jitter, and broadband noise at about -50 dBFS so that no mel band is digitally silent.
Video signatures are a coloured drifting sine grating with a signature-specific hue,
orientation and spatial frequency, random per-clip offsets, and mild pixel noise; the grating
drifts over time so every frame differs from its neighbours.
"""

from __future__ import annotations

import colorsys
import logging
import math
import os
import pathlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from avsc_pipeline.atomic import atomic_path
from avsc_pipeline.corpus.clips import write_tsv
from avsc_pipeline.corpus.tau import FOLD_HEADER, META_HEADER, TAU_CLASSES, TEST_HEADER

logger = logging.getLogger(__name__)


TAU_CITIES: tuple[str, ...] = (
    "amsterdam", "barcelona", "helsinki", "lisbon", "london", "lyon",
    "milan", "paris", "prague", "stockholm", "vienna",
)

AUDIO_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
"""Class-index pairs whose audio is statistically identical (audio signature k = pair k)."""

VIDEO_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 0))
"""Class-index pairs whose video is statistically identical (video signature k = pair k)."""

# About 30 % of each class's locations go to the evaluate fold, as in the real set.
_EVALUATE_FRACTION = 0.3
_AUDIO_STREAM, _VIDEO_STREAM = 0, 1


class _AudioSignature(NamedTuple):
    centre_hz: float
    bandwidth_oct: float
    tones_hz: tuple[float, ...]
    am_hz: float


class _VideoSignature(NamedTuple):
    hue: float  # in [0, 1)
    angle_deg: float
    cycles: float  # grating cycles across the frame width


# Centres are >= 1.1 octaves apart and the per-clip jitter is +-0.15 octave, so the bands
# stay apart in a 128-band log-mel spectrogram; all centres lie below 16 kHz (sample_rate).
_AUDIO_SIGNATURES: tuple[_AudioSignature, ...] = (
    _AudioSignature(180.0, 1.4, (100.0, 300.0), 0.5),
    _AudioSignature(700.0, 1.0, (1_250.0,), 1.5),
    _AudioSignature(2_000.0, 1.0, (440.0, 3_600.0), 3.0),
    _AudioSignature(5_000.0, 1.0, (2_500.0,), 5.0),
    _AudioSignature(11_000.0, 1.0, (7_000.0,), 8.0),
)

# Hues 0.2 apart with +-0.03 jitter; orientations and stripe frequencies differ as well.
_VIDEO_SIGNATURES: tuple[_VideoSignature, ...] = (
    _VideoSignature(0.00, 0.0, 3.0),
    _VideoSignature(0.20, 45.0, 6.0),
    _VideoSignature(0.40, 90.0, 2.0),
    _VideoSignature(0.60, 135.0, 8.0),
    _VideoSignature(0.80, 60.0, 4.0),
)


def _signature_of(class_index: int, pairs: Sequence[tuple[int, int]]) -> int:
    for signature, pair in enumerate(pairs):
        if class_index in pair:
            return signature
    raise ValueError(f"expected a class index in {pairs}, got {class_index}")


def audio_signature(class_index: int) -> int:
    """Return the audio signature (index into ``AUDIO_PAIRS``) of a class index."""
    return _signature_of(class_index, AUDIO_PAIRS)


def video_signature(class_index: int) -> int:
    """Return the video signature (index into ``VIDEO_PAIRS``) of a class index."""
    return _signature_of(class_index, VIDEO_PAIRS)


@dataclass(frozen=True)
class DemoConfig:
    """How the teaching data set is generated.

    Attributes:
        clips_per_class: Clips per scene class (>= 1; >= 2 puts every class in both folds).
        seed: Non-negative seed; clip ``k`` of class ``c`` depends only on ``(seed, c, k)``.
        duration: Clip length in seconds (>= 1.0, a whole number of video frames).
        sample_rate: Audio sample rate in Hz (>= 32000 so every audio signature fits).
        fps: Video frame rate (frames per second).
        width: Video frame width in pixels (even, >= 16).
        height: Video frame height in pixels (even, >= 16).
    """

    clips_per_class: int = 8
    seed: int = 0
    duration: float = 10.0
    sample_rate: int = 48000
    fps: int = 30
    width: int = 128
    height: int = 96

    def __post_init__(self) -> None:
        for name in ("clips_per_class", "seed", "sample_rate", "fps", "width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"expected an int for {name}, got {type(value).__name__}")
        if isinstance(self.duration, bool) or not isinstance(self.duration, (int, float)):
            raise TypeError(f"expected a float for duration, got {type(self.duration).__name__}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        if self.clips_per_class < 1:
            raise ValueError(f"expected clips_per_class >= 1, got {self.clips_per_class}")
        if self.seed < 0:
            raise ValueError(f"expected seed >= 0, got {self.seed}")
        if not (math.isfinite(self.duration) and self.duration >= 1.0):
            raise ValueError(f"expected duration >= 1.0 seconds, got {self.duration}")
        if self.sample_rate < 32000:
            raise ValueError(f"expected sample_rate >= 32000, got {self.sample_rate}")
        if self.fps < 1:
            raise ValueError(f"expected fps >= 1, got {self.fps}")
        frames = self.duration * self.fps
        if abs(frames - round(frames)) > 1e-6:
            raise ValueError(
                f"expected duration * fps to be a whole number of frames, got {frames}"
            )
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 16 or value % 2:
                raise ValueError(f"expected an even {name} >= 16, got {value}")

    @property
    def num_samples(self) -> int:
        """Audio samples per channel in one clip."""
        return int(round(self.duration * self.sample_rate))

    @property
    def num_frames(self) -> int:
        """Video frames in one clip."""
        return int(round(self.duration * self.fps))


@dataclass(frozen=True)
class _Clip:
    class_index: int
    index: int  # clip index within its class
    city: str
    location: int
    segment: int
    evaluate: bool

    @property
    def scene(self) -> str:
        return TAU_CLASSES[self.class_index]

    @property
    def identifier(self) -> str:
        return f"{self.city}-{self.location}"

    @property
    def stem(self) -> str:
        return f"{self.scene}-{self.city}-{self.location}-{self.segment}"

    @property
    def audio_path(self) -> str:
        return f"audio/{self.stem}.wav"

    @property
    def video_path(self) -> str:
        return f"video/{self.stem}.mp4"


def _num_locations(clips_per_class: int) -> int:
    """Locations per class: two segments per location, but at least two locations."""
    if clips_per_class == 1:
        return 1
    return max(2, math.ceil(clips_per_class / 2))


def _plan_clips(config: DemoConfig) -> list[_Clip]:
    """Name every clip and assign it a location and a fold (location-disjoint)."""
    n_locations = _num_locations(config.clips_per_class)
    n_evaluate = 0 if n_locations < 2 else max(1, round(_EVALUATE_FRACTION * n_locations))
    clips = []
    for class_index in range(len(TAU_CLASSES)):
        for k in range(config.clips_per_class):
            loc = k % n_locations
            clips.append(
                _Clip(
                    class_index=class_index,
                    index=k,
                    city=TAU_CITIES[(loc + 3 * class_index) % len(TAU_CITIES)],
                    # Unique over the whole set for any number of locations.
                    location=loc * len(TAU_CLASSES) + class_index,
                    segment=k // n_locations,
                    evaluate=loc >= n_locations - n_evaluate,
                )
            )
    return clips


def _clip_rng(config: DemoConfig, clip: _Clip, stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, clip.class_index, clip.index, stream])


# --------------------------------------------------------------------------- audio


def _fast_fft_length(n: int) -> int:
    """Smallest 5-smooth integer >= n: lengths with large prime factors make the FFT slow."""
    while True:
        m = n
        for factor in (2, 3, 5):
            while m % factor == 0:
                m //= factor
        if m == 1:
            return n
        n += 1


def _band_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    sample_rate: int,
    centre: float,
    octaves: float,
) -> np.ndarray:
    """Gaussian noise shaped by a log-frequency Gaussian band, unit RMS per row."""
    n_fft = _fast_fft_length(shape[-1])
    spectrum = np.fft.rfft(rng.standard_normal((shape[0], n_fft)), axis=-1)
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    log_dist = np.log2(np.maximum(freqs, 1.0) / centre) / (octaves / 2.0)
    noise = np.fft.irfft(spectrum * np.exp(-0.5 * log_dist**2), n=n_fft, axis=-1)[:, : shape[-1]]
    return noise / np.sqrt(np.mean(noise**2, axis=-1, keepdims=True))


def _tones(rng: np.random.Generator, t: np.ndarray, tones_hz: Sequence[float]) -> np.ndarray:
    out = np.zeros_like(t)
    for freq in tones_hz:
        freq *= 1.0 + rng.uniform(-0.02, 0.02)
        level = 10.0 ** (rng.uniform(-14.0, -8.0) / 20.0) * math.sqrt(2.0)
        out += level * np.sin(2.0 * np.pi * freq * t + rng.uniform(0.0, 2.0 * np.pi))
    return out


def synthesize_audio(config: DemoConfig, class_index: int, rng: np.random.Generator) -> np.ndarray:
    """Synthesise one clip's audio from the audio signature of a class.

    Args:
        config: Sample rate and duration.
        class_index: Index into ``TAU_CLASSES``.
        rng: Random generator for this clip.

    Returns:
        ``(num_samples, 2) int16`` stereo PCM.
    """
    sig = _AUDIO_SIGNATURES[audio_signature(class_index)]
    sr, n = config.sample_rate, config.num_samples
    max_delay = 24  # samples (0.5 ms at 48 kHz): a small inter-channel delay
    t = np.arange(n + max_delay) / sr
    centre = sig.centre_hz * 2.0 ** rng.uniform(-0.15, 0.15)
    # One shared source plus an independent band-noise draw per channel.
    noise = _band_noise(rng, (3, n + max_delay), sr, centre, sig.bandwidth_oct)
    am_rate = sig.am_hz * rng.uniform(0.8, 1.2)
    envelope = 1.0 + rng.uniform(0.2, 0.5) * np.sin(
        2.0 * np.pi * am_rate * t + rng.uniform(0.0, 2.0 * np.pi)
    )
    source = envelope * (noise[0] + _tones(rng, t, sig.tones_hz))
    delay = int(rng.integers(0, max_delay + 1))
    right_gain = 10.0 ** (rng.uniform(-2.0, 2.0) / 20.0)
    left = source[max_delay:] + 0.3 * noise[1, max_delay:]
    right = right_gain * source[max_delay - delay : max_delay - delay + n] + 0.3 * noise[2, :n]
    stereo = np.stack([left, right], axis=-1)
    stereo *= 10.0 ** (rng.uniform(-26.0, -20.0) / 20.0) / np.sqrt(np.mean(stereo**2))
    stereo += 10.0 ** (-50.0 / 20.0) * rng.standard_normal(stereo.shape)
    peak = np.max(np.abs(stereo))
    if peak > 0.99:
        stereo *= 0.99 / peak
    return np.round(stereo * 32767.0).astype(np.int16)


def _write_wav(path: pathlib.Path, pcm: np.ndarray, sample_rate: int) -> None:
    import soundfile

    with atomic_path(path) as tmp:
        soundfile.write(tmp, pcm, sample_rate, subtype="PCM_16", format="WAV")


# --------------------------------------------------------------------------- video


def synthesize_video(
    config: DemoConfig, class_index: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Synthesise one clip's frames from the video signature of a class.

    Args:
        config: Frame size, frame rate and duration.
        class_index: Index into ``TAU_CLASSES``.
        rng: Random generator for this clip.

    Yields:
        ``config.num_frames`` frames, each ``(height, width, 3) uint8`` RGB.
    """
    sig = _VIDEO_SIGNATURES[video_signature(class_index)]
    h, w = config.height, config.width
    hue = (sig.hue + rng.uniform(-0.03, 0.03)) % 1.0
    colour = np.asarray(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.8), rng.uniform(0.5, 0.65)))
    angle = math.radians(sig.angle_deg + rng.uniform(-8.0, 8.0))
    cycles = sig.cycles * rng.uniform(0.9, 1.1)
    contrast = rng.uniform(0.25, 0.4)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    phase_map = 2.0 * np.pi * cycles * (x * math.cos(angle) + y * math.sin(angle)) / w
    phase0 = rng.uniform(0.0, 2.0 * np.pi)
    # Drift of 0.5 to 1 grating cycle per second: slow, but every frame moves.
    speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * 2.0 * np.pi / config.fps
    colour255 = (255.0 * colour).astype(np.float32)
    for i in range(config.num_frames):
        shade = 1.0 + contrast * np.sin(phase_map + (phase0 + speed * i))
        frame = shade.astype(np.float32)[..., None] * colour255
        frame += 3.0 * rng.standard_normal((h, w, 3), dtype=np.float32)
        yield np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def _write_mp4(path: pathlib.Path, frames: Iterator[np.ndarray], config: DemoConfig) -> None:
    import av

    time_base = Fraction(1, config.fps)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=config.fps)
            stream.width, stream.height, stream.pix_fmt = config.width, config.height, "yuv420p"
            stream.time_base = time_base
            stream.options = {"crf": "20", "preset": "veryfast"}
            # One thread: deterministic bitstreams, and clips are tiny.
            stream.codec_context.thread_count = 1
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts, frame.time_base = i, time_base
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))


# --------------------------------------------------------------------------- tables


def _write_tables(root: pathlib.Path, clips: Sequence[_Clip]) -> None:
    meta = [(c.audio_path, c.video_path, c.scene, c.identifier) for c in clips]
    train = [(c.audio_path, c.video_path, c.scene) for c in clips if not c.evaluate]
    evaluate = [(c.audio_path, c.video_path, c.scene) for c in clips if c.evaluate]
    setup = root / "evaluation_setup"
    write_tsv(root / "meta.csv", META_HEADER, meta)
    write_tsv(setup / "fold1_train.csv", FOLD_HEADER, train)
    write_tsv(setup / "fold1_evaluate.csv", FOLD_HEADER, evaluate)
    write_tsv(setup / "fold1_test.csv", TEST_HEADER, [row[:2] for row in evaluate])
    if not evaluate:
        logger.warning("clips_per_class=1: fold1_evaluate.csv is empty (one location per class)")


def write_demo_dataset(
    out: str | os.PathLike, config: DemoConfig = DemoConfig(), progress: bool = False
) -> pathlib.Path:
    """Write the synthetic teaching data set in the TAU Audio-Visual Scenes 2021 layout.

    Deterministic: the same config gives byte-identical WAVs and CSVs and MP4s that decode
    to identical frames. Clip ``k`` of class ``c`` depends only on ``(seed, c, k)`` and the
    format fields, not on ``clips_per_class``. Every file is written under a temporary name
    and renamed when complete, and the CSV files are written last, so a ``meta.csv`` means
    every clip it lists is complete; existing files of the same name are replaced.

    Args:
        out: Root folder of the data set (created if missing).
        config: Size, seed and media format of the set.
        progress: Show a tqdm progress bar over clips.

    Returns:
        The root folder as a ``pathlib.Path``.

    Raises:
        TypeError: If ``out`` is not a path or ``config`` is not a ``DemoConfig``.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"expected a str or os.PathLike for out, got {type(out).__name__}")
    if not isinstance(config, DemoConfig):
        raise TypeError(f"expected a DemoConfig, got {type(config).__name__}")
    from tqdm.auto import tqdm

    root = pathlib.Path(out)
    for sub in ("audio", "video", "evaluation_setup"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    clips = _plan_clips(config)
    for clip in tqdm(clips, desc="demo clips", unit="clip", disable=not progress):
        pcm = synthesize_audio(config, clip.class_index, _clip_rng(config, clip, _AUDIO_STREAM))
        _write_wav(root / clip.audio_path, pcm, config.sample_rate)
        frames = synthesize_video(config, clip.class_index, _clip_rng(config, clip, _VIDEO_STREAM))
        _write_mp4(root / clip.video_path, frames, config)
    _write_tables(root, clips)
    logger.info("wrote %d demo clips (%d classes) to %s", len(clips), len(TAU_CLASSES), root)
    return root
