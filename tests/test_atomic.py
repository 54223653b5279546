"""The one atomic write: a failing serializer leaves the old file and no temporary file."""

import json
import os

import pytest

from avsc_pipeline.atomic import atomic_open, atomic_path, temporary_path, write_text_atomic


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_open_writes_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "data.json"
    with atomic_open(target, "w") as handle:
        json.dump({"a": [1, 2]}, handle)
        assert not target.exists()  # nothing under the final name until the block ends
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": [1, 2]}
    assert _listing(tmp_path) == ["data.json"]


def test_a_failing_serializer_keeps_the_old_content_and_removes_the_temporary_file(tmp_path):
    target = tmp_path / "data.json"
    target.write_text('{"old": true}', encoding="utf-8")
    with pytest.raises(TypeError, match="not JSON serializable"):
        with atomic_open(target, "w") as handle:
            json.dump({"fine": 1, "bad": object()}, handle)  # writes a prefix, then fails
    assert target.read_text(encoding="utf-8") == '{"old": true}'
    assert _listing(tmp_path) == ["data.json"]


def test_a_failing_torch_save_keeps_the_old_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    target = tmp_path / "last.pt"
    torch.save({"epoch": 1}, target)
    with pytest.raises(Exception):
        with atomic_open(target, "wb") as handle:
            torch.save({"weights": torch.zeros(3), "hook": lambda: None}, handle)  # a lambda cannot be pickled
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert _listing(tmp_path) == ["last.pt"]


def test_atomic_path_removes_a_half_written_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "clip.wav"
    target.write_bytes(b"old")

    def writer(path):
        with open(path, "wb") as handle:
            handle.write(b"half of a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name != target.name
            writer(tmp)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["clip.wav"]


def test_an_interrupt_mid_write_removes_the_temporary_file(tmp_path):
    target = tmp_path / "index.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target, "w") as handle:
            handle.write("{")
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_atomic_path_refuses_a_block_that_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected the block to write"):
        with atomic_path(tmp_path / "x.h5"):
            pass
    assert _listing(tmp_path) == []


def test_a_named_temporary_file_must_sit_beside_the_target(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="expected a temporary file other than the target"):
        with atomic_path(tmp_path / "x.h5", temporary=tmp_path / "sub" / "x.h5.tmp"):
            pass
    with pytest.raises(ValueError, match="expected a temporary file other than the target"):
        with atomic_path(tmp_path / "x.h5", temporary=tmp_path / "x.h5"):
            pass


def test_a_named_temporary_file_is_written_over_and_renamed(tmp_path):
    target, leftover = tmp_path / "shard-00000.h5", tmp_path / "shard-00000.h5.tmp"
    leftover.write_bytes(b"a killed run's leftover")
    with atomic_path(target, temporary=leftover) as tmp:
        assert tmp == leftover
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and _listing(tmp_path) == ["shard-00000.h5"]


def test_write_text_atomic_and_the_default_temporary_name(tmp_path):
    path = write_text_atomic(tmp_path / "report.md", "a\r\nb\n")
    assert path.read_bytes() == b"a\r\nb\n"  # written as given, no newline translation
    assert temporary_path(tmp_path / "report.md") == tmp_path / f".report.md.{os.getpid()}.tmp"
    with pytest.raises(TypeError, match="expected text as str, got bytes"):
        write_text_atomic(tmp_path / "x", b"bytes")
    with pytest.raises(ValueError, match="expected mode in"):
        with atomic_open(tmp_path / "x", "a"):
            pass
