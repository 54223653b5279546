"""The DCASE output file: exact round trip, header order, segment names, malformed files."""

from __future__ import annotations

import numpy as np
import pytest

from avsc_pipeline.evaluation.output_file import read_predictions, segment_filename, write_predictions

CLASSES = ["airport", "bus", "metro", "street_traffic"]


def _awkward_probs(dtype, n=50):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.full(len(CLASSES), 0.3), size=n).astype(dtype)
    probs[0] = [1.0, 0.0, 0.0, 0.0]
    probs[1] = [np.finfo(dtype).tiny, 1e-30, 0.1, 1 - np.finfo(dtype).eps]  # subnormal-adjacent, 1-eps
    probs[2] = [np.nextafter(dtype(0.5), dtype(1)), 0.25, 0.125, np.nextafter(dtype(0.125), dtype(0))]
    return probs


def _names(n):
    return [segment_filename(f"audio/tram-vienna-285-{k // 5}.wav", k % 5, 5) for k in range(n)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, dtype):
    probs = _awkward_probs(dtype)
    names = _names(len(probs))
    path = write_predictions(tmp_path / "pred.tsv", names, probs, CLASSES)
    filenames, labels, read, classes = read_predictions(path)
    assert classes == CLASSES
    assert filenames == names
    assert labels == [CLASSES[i] for i in np.argmax(probs, axis=1)]
    assert read.shape == probs.shape
    np.testing.assert_array_equal(read.astype(dtype), probs)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.tsv"]  # no temporary file left


def test_file_layout(tmp_path):
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
    path = write_predictions(tmp_path / "p.tsv", ["a.wav", "b.wav"], probs, CLASSES)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "filename\tscene_label\tairport\tbus\tmetro\tstreet_traffic"
    assert len(lines) == 3  # one row per segment
    fields = lines[1].split("\t")
    assert fields[:2] == ["a.wav", "street_traffic"]
    assert [np.float32(float(v)) for v in fields[2:]] == list(probs[0])
    assert lines[2].split("\t")[1] == "airport"


def test_segment_filename_forms():
    assert segment_filename("audio/airport-lisbon-1000-40000.wav", 0, 1) == "audio/airport-lisbon-1000-40000.wav"
    assert segment_filename("audio/airport-lisbon-1000-40000.wav", 3, 10) == "audio/airport-lisbon-1000-40000-3.wav"
    assert segment_filename("airport-lisbon-1000-40000.wav", 0, 10) == "airport-lisbon-1000-40000-0.wav"
    assert segment_filename("/data/x/a.b.wav", 9, 10) == "/data/x/a.b-9.wav"
    with pytest.raises(ValueError, match="expected 0 <= segment < n_segments"):
        segment_filename("a.wav", 10, 10)
    with pytest.raises(ValueError, match="expected 0 <= segment < n_segments"):
        segment_filename("a.wav", 1, 1)


@pytest.mark.parametrize(
    "text, line",
    [
        ("", 1),
        ("file\tscene_label\ta\tb\n", 1),
        ("filename\tscene_label\ta\tb\nx.wav\ta\t0.5\n", 2),
        ("filename\tscene_label\ta\tb\nx.wav\ta\t0.5\t0.5\ny.wav\tc\t0.5\t0.5\n", 3),
        ("filename\tscene_label\ta\tb\nx.wav\ta\t0.5\tzero\n", 2),
        ("filename\tscene_label\ta\tb\nx.wav\ta\t0.5\tnan\n", 2),
    ],
)
def test_malformed_file_names_file_and_line(tmp_path, text, line):
    path = tmp_path / "bad.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=f"bad.tsv:{line}: expected"):
        read_predictions(path)


def test_write_refuses_bad_input(tmp_path):
    probs = np.full((2, 4), 0.25)
    with pytest.raises(ValueError, match=r"expected probabilities of shape \(1, 4\)"):
        write_predictions(tmp_path / "p.tsv", ["a.wav"], probs, CLASSES)
    with pytest.raises(ValueError, match="without tabs"):
        write_predictions(tmp_path / "p.tsv", ["a\t.wav", "b.wav"], probs, CLASSES)
    assert not list(tmp_path.iterdir())  # a failed write leaves nothing behind
