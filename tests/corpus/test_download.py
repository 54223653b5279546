"""`avsc-features download` against a local HTTP server on 127.0.0.1 (never the internet).

The server serves small zips in the TAU layout, honours range requests and can cut a transfer
short, corrupt a package or lack one; the unpacked files are compared byte for byte with the
files that went into the zips, and the MD5s in the list are computed here with hashlib.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import logging
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from click.testing import CliRunner

from avsc_pipeline import testing
from avsc_pipeline.corpus import download as dl
from avsc_pipeline.corpus.tau import load_tau
from avsc_pipeline.corpus.unpack import marker_path, member_paths, staging_folder, unpack_package
from avsc_pipeline_cli.features import main

FOLDER = "TAU-urban-audio-visual-scenes-2021-development"
FAST = dl.DownloadOptions(jobs=3, retries=0, backoff=0.0, timeout=10.0, progress=False)


class PackageServer:
    """A threaded HTTP server of named byte strings with range requests and scripted faults.

    Attributes:
        requests: `(name, Range header or None)` of every GET, in arrival order.
        cut: `{name: n}`: the next response for `name` stops after `n` body bytes (once).
        corrupt: `{name: times}`: the next `times` responses for `name` have one byte changed.
    """

    def __init__(self, files: Dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: List[Tuple[str, Optional[str]]] = []
        self.cut: Dict[str, int] = {}
        self.corrupt: Dict[str, int] = {}
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _respond(self, name: str, range_header: Optional[str]) -> Tuple[int, bytes, Dict[str, str], Optional[int]]:
        with self._lock:
            self.requests.append((name, range_header))
            if name not in self.files:
                return 404, b"", {}, None
            data = self.files[name]
            if self.corrupt.get(name, 0) > 0:
                self.corrupt[name] -= 1
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
            cut = self.cut.pop(name, None)
        if range_header is None:
            return 200, data, {}, cut
        start = int(range_header.removeprefix("bytes=").rstrip("-"))
        if start >= len(data):
            return 416, b"", {"Content-Range": f"bytes */{len(data)}"}, None
        return 206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, cut

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                status, body, headers, cut = server._respond(self.path.lstrip("/"), self.headers.get("Range"))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body if cut is None else body[:cut])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: nothing to send it
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        return Handler


def _zip(path: Path, files: Dict[str, Path]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, source in files.items():
            archive.write(source, name)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """4 clips of 1 s in the TAU layout: what the packages hold."""
    return testing.make_tau_dataset(tmp_path_factory.mktemp("source") / FOLDER, n_clips=4, seconds=1.0)


@pytest.fixture(scope="module")
def zips(source, tmp_path_factory) -> Dict[str, bytes]:
    """meta, two audio and one video package; the video zip has no top-level folder (both
    layouts unpack alike)."""
    out = tmp_path_factory.mktemp("zips")
    lists = {f"{FOLDER}/{p.relative_to(source).as_posix()}": p
             for p in [source / "meta.csv", *sorted((source / "evaluation_setup").iterdir())]}
    audio = sorted((source / "audio").iterdir())
    video = {f"video/{p.name}": p for p in sorted((source / "video").iterdir())}
    made = {
        f"{FOLDER}.meta.zip": _zip(out / "m.zip", lists),
        f"{FOLDER}.audio.1.zip": _zip(out / "a1.zip", {f"{FOLDER}/audio/{p.name}": p for p in audio[:2]}),
        f"{FOLDER}.audio.2.zip": _zip(out / "a2.zip", {f"{FOLDER}/audio/{p.name}": p for p in audio[2:]}),
        f"{FOLDER}.video.1.zip": _zip(out / "v1.zip", video),
    }
    return {name: path.read_bytes() for name, path in made.items()}


@pytest.fixture
def server(zips):
    server = PackageServer(zips)
    yield server
    server.close()


def _package_list(server: PackageServer, zips: Dict[str, bytes], extra: Tuple[str, ...] = ()) -> dl.PackageList:
    def part(name: str) -> str:
        return name[len(FOLDER) + 1:].split(".")[0]

    packages = [dl.Package(name, server.url(name), hashlib.md5(data).hexdigest(), len(data), part(name))
                for name, data in zips.items()]
    packages += [dl.Package(name, server.url(name), "0" * 32, 1000, "audio") for name in extra]
    return dl.PackageList("tau-av-2021-dev", "test set", FOLDER, tuple(packages))


def _assert_same_tree(source: Path, unpacked: Path) -> None:
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert files and all(filecmp.cmp(source / f, unpacked / f, shallow=False) for f in files)


def _range_requests(server: PackageServer, name: str) -> List[str]:
    return [r for n, r in server.requests if n == name and r is not None]


def test_complete_run_then_rerun_does_nothing(server, zips, source, tmp_path):
    packages = _package_list(server, zips)
    summary = dl.download_dataset(tmp_path, packages, FAST)
    assert summary.folder == tmp_path / FOLDER and sorted(summary.fetched) == sorted(zips)
    _assert_same_tree(source, tmp_path / FOLDER)
    clips = load_tau(tmp_path / FOLDER, "all")  # the layout `avsc-features extract` reads
    assert len(clips) == 4 and all(c.audio.is_file() and c.video.is_file() for c in clips)
    assert not list((tmp_path / "packages").iterdir())  # zips removed after unpacking
    assert not staging_folder(tmp_path / FOLDER, "x").parent.exists()
    seen = len(server.requests)
    again = dl.download_dataset(tmp_path, packages, FAST)
    assert len(server.requests) == seen and again.fetched == () and sorted(again.in_place) == sorted(zips)


def test_transfer_cut_in_the_middle_resumes_from_part(server, zips, source, tmp_path):
    name = f"{FOLDER}.audio.1.zip"
    server.cut[name] = 1000
    packages = _package_list(server, zips)
    with pytest.raises(dl.DownloadError, match=r"audio\.1\.zip: transfer failed .* rerun resumes it"):
        dl.download_dataset(tmp_path, packages, FAST)
    assert (tmp_path / "packages" / f"{name}.part").stat().st_size == 1000
    assert marker_path(tmp_path / FOLDER, f"{FOLDER}.audio.2.zip").is_file()  # the others completed
    summary = dl.download_dataset(tmp_path, packages, FAST)
    assert summary.fetched == (name,) and _range_requests(server, name) == ["bytes=1000-"]
    _assert_same_tree(source, tmp_path / FOLDER)


def test_transfer_cut_resumes_within_the_run(server, zips, source, tmp_path):
    name = f"{FOLDER}.video.1.zip"
    server.cut[name] = len(zips[name]) // 3
    dl.download_dataset(tmp_path, _package_list(server, zips), dl.DownloadOptions(
        jobs=2, retries=2, backoff=0.0, progress=True))
    assert _range_requests(server, name) == [f"bytes={len(zips[name]) // 3}-"]
    _assert_same_tree(source, tmp_path / FOLDER)


def test_corrupted_package_is_fetched_again_once(server, zips, source, tmp_path, caplog):
    name = f"{FOLDER}.meta.zip"
    server.corrupt[name] = 1
    with caplog.at_level(logging.WARNING, logger="avsc_pipeline"):
        dl.download_dataset(tmp_path, _package_list(server, zips), FAST)
    assert [r for n, r in server.requests if n == name] == [None, None]
    assert any(name in m and "expected MD5" in m and "fetching it again" in m for m in caplog.messages)
    _assert_same_tree(source, tmp_path / FOLDER)


def test_persistently_corrupted_package_fails_naming_it(server, zips, tmp_path):
    name = f"{FOLDER}.audio.2.zip"
    server.corrupt[name] = 2
    with pytest.raises(dl.DownloadError, match=rf"{name}: expected MD5 [0-9a-f]{{32}}, got [0-9a-f]{{32}} again"):
        dl.download_dataset(tmp_path, _package_list(server, zips), FAST)
    assert sorted(p.name for p in (tmp_path / "packages").iterdir()) == []  # the bad file removed
    assert not marker_path(tmp_path / FOLDER, name).exists()
    assert marker_path(tmp_path / FOLDER, f"{FOLDER}.audio.1.zip").is_file()


def test_missing_package_is_an_error_naming_its_url(server, zips, tmp_path):
    missing = f"{FOLDER}.audio.9.zip"
    with pytest.raises(dl.DownloadError, match=rf"{server.url(missing)}: not found \(HTTP 404\)"):
        dl.download_dataset(tmp_path, _package_list(server, zips, extra=(missing,)), FAST)
    assert marker_path(tmp_path / FOLDER, f"{FOLDER}.meta.zip").is_file()


def test_free_space_is_checked_before_any_transfer(server, zips, tmp_path, monkeypatch):
    packages = _package_list(server, zips)
    total = sum(len(d) for d in zips.values())
    assert dl.required_space(packages.packages, tmp_path, jobs=1, keep_packages=True) == 2 * total
    largest = max(len(d) for d in zips.values())
    assert dl.required_space(packages.packages, tmp_path, jobs=1, keep_packages=False) == total + largest
    (tmp_path / f"{FOLDER}.meta.zip.part").write_bytes(b"x" * 100)  # what is there is not fetched again
    assert dl.required_space(packages.packages, tmp_path, jobs=9, keep_packages=True) == 2 * total - 100

    class Usage:
        free = total

    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(dl.DownloadError, match="expected at least .* GB free for 4 package"):
        dl.download_dataset(tmp_path, packages, FAST)
    assert server.requests == []


def test_cli_keeps_packages_and_unpacks_a_kept_one_without_fetching(server, zips, source, tmp_path):
    listing = tmp_path / "packages.json"
    packages = _package_list(server, zips)
    listing.write_text(json.dumps({"datasets": {"tau-av-2021-dev": {"folder": FOLDER, "packages": [
        {"filename": p.filename, "url": p.url, "md5": p.md5, "bytes": p.size, "part": p.part}
        for p in packages.packages]}}}))
    root = tmp_path / "data"
    args = ["download", str(root), "--package-list", str(listing), "--jobs", "2", "--keep-packages"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "4 package(s) fetched, 4 unpacked, 0 already in place" in result.output
    assert sorted(p.name for p in (root / "packages").iterdir()) == sorted(zips)
    marker_path(root / FOLDER, f"{FOLDER}.video.1.zip").unlink()
    seen = len(server.requests)
    result = CliRunner().invoke(main, args + ["--no-progress"])
    assert "0 package(s) fetched, 1 unpacked, 3 already in place" in result.output and len(server.requests) == seen
    _assert_same_tree(source, root / FOLDER)
    result = CliRunner().invoke(main, args[:4] + ["--parts", "meta,sound"])
    assert result.exit_code == 1 and "expected --parts out of meta,audio,video,doc,examples" in result.output


def test_cli_error_is_one_line(server, zips, tmp_path):
    listing = tmp_path / "packages.json"
    listing.write_text(json.dumps({"datasets": {"tau-av-2021-dev": {"folder": FOLDER, "packages": [
        {"filename": "x.zip", "url": server.url("x.zip"), "md5": "0" * 32, "bytes": 10, "part": "meta"}]}}}))
    result = CliRunner().invoke(main, ["download", str(tmp_path / "d"), "--package-list", str(listing),
                                       "--no-progress", "--retries", "0"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {server.url('x.zip')}: not found (HTTP 404); the "
                                                  "package list may be out of date"]


def test_cli_help_documents_the_command():
    result = CliRunner().invoke(main, ["download", "--help"])
    assert result.exit_code == 0
    assert all(word in result.output for word in ("ROOT", "--dataset", "--parts", "--jobs", "--package-list",
                                                  ".part", "MD5"))


def test_shipped_lists_match_the_published_sets():
    dev = dl.load_package_list("tau-av-2021-dev")
    assert dev.folder == FOLDER and len(dev.packages) == 25  # 1 meta, 8 audio, 16 video zips
    assert 107e9 < sum(p.size for p in dev.packages) < 108e9
    assert all(p.url.startswith("https://zenodo.org/record/4477542/files/") for p in dev.packages)
    evaluation = dl.load_package_list("tau-av-2021-eval", parts=["meta"])
    assert [p.filename for p in evaluation.packages] == ["TAU-urban-audio-visual-scenes-2021-evaluation.meta.zip"]
    with pytest.raises(ValueError, match="expected --dataset one of"):
        dl.load_package_list("tau-2020")
    with pytest.raises(ValueError, match="expected an MD5 of 32 lowercase hex digits"):
        dl.Package("a.zip", "https://x/a.zip", "abc", 1, "meta")


def test_member_paths_merge_the_top_folder_and_refuse_escapes():
    assert [str(p) for _, p in member_paths([f"{FOLDER}/", f"{FOLDER}/audio/a.wav", f"{FOLDER}/meta.csv"],
                                            FOLDER)] == ["audio/a.wav", "meta.csv"]
    assert [str(p) for _, p in member_paths(["audio/a.wav", "meta.csv"], FOLDER)] == ["audio/a.wav", "meta.csv"]
    with pytest.raises(ValueError, match="expected relative member paths"):
        member_paths(["audio/../../evil.sh"], FOLDER)


def test_unpack_is_atomic(tmp_path):
    good = {"audio/a.wav": b"a" * 5000, "audio/b.wav": b"b" * 5000}
    target = tmp_path / FOLDER
    path = tmp_path / "p.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in good.items():
            archive.writestr(name, data)
    raw = path.read_bytes()
    damaged = tmp_path / "bad.zip"
    damaged.write_bytes(raw.replace(b"b" * 100, b"c" + b"b" * 99, 1))  # b.wav fails its CRC
    with pytest.raises(ValueError, match="damaged"):
        unpack_package(damaged, target, "0" * 32, FOLDER)
    assert not (target / "audio" / "a.wav").exists() and not marker_path(target, damaged.name).exists()
    staging = staging_folder(target, path.name)
    staging.mkdir(parents=True)
    (staging / "half.wav").write_bytes(b"x")  # a crashed unpack's leftover is not trusted
    assert unpack_package(path, target, "1" * 32, FOLDER) == 2
    assert {p.relative_to(target).as_posix(): p.read_bytes() for p in (target / "audio").iterdir()} == good
    assert marker_path(target, path.name).read_text().strip() == "1" * 32 and not staging.exists()
