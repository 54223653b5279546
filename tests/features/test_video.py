"""Frame selection against frames decoded independently, the shared resize, bad video input."""

import av
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from avsc_pipeline.errors import BadClipError
from avsc_pipeline.features.video import read_frame_pairs, resize_frames, select_frames, target_times
from avsc_pipeline.testing import write_video

TIMES = (0.0, 14.0 / 30.0)


def decode_all(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def expected_index(t, fps):
    """Nearest frame to time t at a constant rate; ties go to the earlier frame."""
    lo = int(np.floor(t * fps + 1e-9))
    return lo if t - lo / fps <= (lo + 1) / fps - t + 1e-12 else lo + 1


@pytest.mark.parametrize("fps", [24, 25, 30])
def test_frame_selection_matches_independent_decode(tmp_path, fps):
    path = write_video(tmp_path / f"v{fps}.mp4", n_frames=3 * fps, fps=fps)
    frames = decode_all(path)
    pairs = read_frame_pairs(path, 3, TIMES, size=224)
    assert pairs.shape == (3, 2, 3, 224, 224) and pairs.dtype == np.uint8
    for k in range(3):
        for j, t in enumerate(TIMES):
            idx = expected_index(k + t, fps)
            want = F.resize(torch.from_numpy(frames[idx]).permute(2, 0, 1), [224, 224], antialias=True)
            np.testing.assert_array_equal(pairs[k, j], want.numpy(), err_msg=f"segment {k} frame {j} (index {idx})")
    if fps == 30:  # the 1st and 15th frame of each second
        assert [expected_index(1 + t, 30) for t in TIMES] == [30, 44]


def test_frame_selection_on_real_24fps_clip(shared_mini):
    path = sorted((shared_mini / "video").glob("*.mp4"))[0]
    frames = decode_all(path)
    assert len(frames) == 240
    picked, rate = select_frames(path, target_times(10, TIMES).ravel())
    assert rate == 24
    for i, t in enumerate(target_times(10, TIMES).ravel()):
        np.testing.assert_array_equal(picked[i], frames[expected_index(t, 24)])


def test_video_shorter_than_audio_drops_trailing_segments(tmp_path):
    path = write_video(tmp_path / "short.mp4", n_frames=int(2.3 * 30), fps=30)  # 69 frames: 0..2.27 s
    pairs = read_frame_pairs(path, 3, TIMES)
    assert len(pairs) == 2  # segment 2 needs 2.467 s


def test_resize_is_torchvision_antialiased_resize():
    img = np.random.default_rng(0).integers(0, 256, (2, 225, 400, 3), dtype=np.uint8)
    out = resize_frames(img)
    want = F.resize(torch.from_numpy(img).permute(0, 3, 1, 2), [224, 224], antialias=True)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.uint8
    torch.testing.assert_close(out, want)
    assert torch.equal(resize_frames(want), want)
    with pytest.raises(ValueError, match="expected a uint8"):
        resize_frames(img.astype(np.float32))


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100), "cannot"),
    ],
    ids=["missing", "empty", "undecodable"],
)
def test_bad_video_is_named(tmp_path, make, reason):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(BadClipError, match=reason) as info:
        read_frame_pairs(path, 2, TIMES)
    assert info.value.path == str(path)


def test_truncated_video_keeps_what_decodes(tmp_path):
    path = write_video(tmp_path / "t.mp4", n_frames=90, fps=30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        pairs = read_frame_pairs(path, 3, TIMES)
    except BadClipError as err:
        assert str(path) in str(err)
    else:
        assert len(pairs) < 3 or pairs.shape[1:] == (2, 3, 224, 224)


def test_audio_only_container_has_no_video_stream(tmp_path):
    path = tmp_path / "a.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(BadClipError, match="no video stream"):
        read_frame_pairs(path, 1, TIMES)


def test_video_with_no_frames(tmp_path):
    """A Matroska file cut right after its first cluster header: a video stream, no frames."""
    full = tmp_path / "full.mkv"
    with av.open(str(full), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = full.read_bytes()
    path = tmp_path / "noframes.mp4"
    path.write_bytes(data[: data.find(bytes.fromhex("1F43B675")) + 8])
    with pytest.raises(BadClipError, match="video has no frames"):
        read_frame_pairs(path, 2, TIMES)
