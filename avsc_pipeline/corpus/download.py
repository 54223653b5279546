"""Downloading a data set's packages: resumable, checked against their MD5, then unpacked.

The package lists of TAU Urban Audio-Visual Scenes 2021 (development and evaluation sets:
file names, URLs, sizes and MD5s) are carried as data in `tau_packages.json`, taken from
dcase_util (the DCASE community's library; the file names its version and classes). Another
list of the same format can be given instead (`--package-list`).

For each package, in `jobs` threads at once: the transfer goes to `ROOT/packages/NAME.part`
and continues from there with an HTTP range request after an interruption (in this run, up to
`retries` times, or in a later run); the complete file is checked against its size and MD5 (a
mismatch removes it and fetches it once more); it is unpacked atomically into `ROOT/<folder>`
(:mod:`.unpack`) and then removed unless `keep_packages`. A package already unpacked (its
marker holds its MD5) is skipped, so a rerun with everything in place does nothing. Free disk
space is checked before any transfer starts.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import re
import shutil
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from avsc_pipeline.corpus.unpack import clear_staging, is_unpacked, unpack_package

logger = logging.getLogger(__name__)

PACKAGE_LIST = Path(__file__).with_name("tau_packages.json")
DATASETS = ("tau-av-2021-dev", "tau-av-2021-eval")
PARTS = ("meta", "audio", "video", "doc", "examples")
DEFAULT_PARTS = ("meta", "audio", "video")
PACKAGES_FOLDER = "packages"
_CHUNK = 1 << 20
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class DownloadError(RuntimeError):
    """A package that could not be fetched, verified or unpacked (its file or URL named)."""


@dataclass(frozen=True)
class Package:
    """One downloadable file of a data set.

    Attributes:
        filename: the file's name (no folders), e.g. `TAU-...-development.audio.1.zip`.
        url: where to fetch it (http or https).
        md5: its published MD5, 32 lowercase hex digits.
        size: its size in bytes, or None where the list does not give it.
        part: what it holds, one of `PARTS`.
    """

    filename: str
    url: str
    md5: str
    size: Optional[int]
    part: str

    def __post_init__(self) -> None:
        if not self.filename or Path(self.filename).name != self.filename or self.filename.startswith("."):
            raise ValueError(f"expected a plain file name, got {self.filename!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{self.filename}: expected an http(s) URL, got {self.url!r}")
        if not _MD5.match(self.md5):
            raise ValueError(f"{self.filename}: expected an MD5 of 32 lowercase hex digits, got {self.md5!r}")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"{self.filename}: expected a size in bytes >= 0 or null, got {self.size!r}")
        if self.part not in PARTS:
            raise ValueError(f"{self.filename}: expected part in {PARTS}, got {self.part!r}")


@dataclass(frozen=True)
class PackageList:
    """The packages of one data set and the folder they unpack into (`ROOT/<folder>`)."""

    name: str
    title: str
    folder: str
    packages: Tuple[Package, ...]


@dataclass(frozen=True)
class DownloadOptions:
    """How packages are fetched.

    Attributes:
        jobs: packages transferred at once.
        retries: new attempts (each resuming the `.part` file) after an interrupted transfer.
        backoff: seconds before the first new attempt, doubled for each further one.
        timeout: seconds a connection may stay silent.
        keep_packages: keep each zip after unpacking it (otherwise it is removed).
        check_space: refuse to start when the disk lacks the room the packages need.
        progress: one progress bar with bytes and time left.
    """

    jobs: int = 4
    retries: int = 3
    backoff: float = 5.0
    timeout: float = 60.0
    keep_packages: bool = False
    check_space: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.retries < 0:
            raise ValueError(f"expected jobs >= 1 and retries >= 0, got {self.jobs} and {self.retries}")
        if self.backoff < 0 or self.timeout <= 0:
            raise ValueError(f"expected backoff >= 0 and timeout > 0, got {self.backoff} and {self.timeout}")


@dataclass(frozen=True)
class DownloadSummary:
    """What a run did: the data set folder and the packages fetched, unpacked and found in place."""

    folder: Path
    fetched: Tuple[str, ...]
    unpacked: Tuple[str, ...]
    in_place: Tuple[str, ...]


class _Transient(Exception):
    """A transfer that broke off and may be resumed."""


def load_package_list(dataset: str = DATASETS[0], path: Optional[Path] = None,
                      parts: Sequence[str] = DEFAULT_PARTS) -> PackageList:
    """The packages of `dataset` holding `parts`, from `path` (default: the TAU lists shipped here).

    Raises:
        ValueError: an unknown data set or part, or a malformed list (the entry named).
        FileNotFoundError: `path` does not exist.
    """
    path = Path(path) if path is not None else PACKAGE_LIST
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"expected parts out of {','.join(PARTS)}, got {','.join(parts) or 'none'}")
    with open(path, encoding="utf-8") as handle:
        try:
            datasets = json.load(handle)["datasets"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: expected a JSON object with `datasets`, got {err}") from err
    if dataset not in datasets:
        raise ValueError(f"{path}: expected --dataset one of {sorted(datasets)}, got {dataset!r}")
    entry = datasets[dataset]
    try:
        packages = tuple(Package(filename=p["filename"], url=p["url"], md5=p["md5"], size=p.get("bytes"),
                                 part=p["part"]) for p in entry["packages"])
        folder = entry["folder"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: {dataset}: expected packages with filename, url, md5, bytes, part "
                         f"and a folder, got an entry without {err}") from err
    if not folder or Path(folder).name != folder:
        raise ValueError(f"{path}: {dataset}: expected a plain folder name, got {folder!r}")
    chosen = tuple(p for p in packages if p.part in parts)
    return PackageList(dataset, entry.get("title", dataset), folder, chosen)


def required_space(packages: Sequence[Package], packages_dir: Path, jobs: int, keep_packages: bool) -> int:
    """Bytes of disk the remaining packages need: what is left to transfer, plus the unpacked
    files (estimated as the package size: the media inside is already compressed); without
    `keep_packages` only `jobs` packages at a time are on disk, so only the largest `jobs` count."""
    left = []
    for package in packages:
        have = max((p.stat().st_size for p in _local_files(packages_dir, package) if p.exists()), default=0)
        left.append(max(0, (package.size or 0) - have))
    transfers = sum(left) if keep_packages else sum(sorted(left, reverse=True)[:jobs])
    return transfers + sum(p.size or 0 for p in packages)


def download_dataset(root: Path, package_list: PackageList, options: DownloadOptions = DownloadOptions()
                     ) -> DownloadSummary:
    """Fetch, verify and unpack every package of `package_list` into `root/<folder>`.

    Raises:
        DownloadError: a package could not be fetched (404 or a broken transfer, its URL named),
            failed its MD5 twice (its file named and removed) or could not be unpacked; the
            other packages are completed first. Also when the disk lacks the space needed.
    """
    root = Path(root)
    target, packages_dir = root / package_list.folder, root / PACKAGES_FOLDER
    todo = [p for p in package_list.packages if not is_unpacked(target, p.filename, p.md5)]
    in_place = tuple(p.filename for p in package_list.packages if p not in todo)
    if not todo:
        logger.info("%s: all %d packages in place", target, len(in_place))
        return DownloadSummary(target, (), (), in_place)
    packages_dir.mkdir(parents=True, exist_ok=True)
    _check_space(root, todo, packages_dir, options)
    stop = threading.Event()
    clear_staging(target)  # a crashed run's half-unpacked files are never trusted
    try:
        with _ByteBar(todo, packages_dir, options.progress, package_list.folder) as bar:
            results = _run_all(todo, lambda p: _fetch_and_unpack(p, packages_dir, target, package_list.folder,
                                                                  options, bar, stop), options.jobs, stop)
    finally:
        clear_staging(target)
    failures = [err for err in results.values() if isinstance(err, Exception)]
    if len(failures) > 1:
        for err in failures:
            logger.error("%s", err)
        raise DownloadError(f"{failures[0]} (and {len(failures) - 1} more failed package(s): see the log above)")
    if failures:
        raise DownloadError(str(failures[0])) from failures[0]
    fetched = tuple(name for name, was_fetched in results.items() if was_fetched)
    return DownloadSummary(target, fetched, tuple(p.filename for p in todo), in_place)


def file_md5(path: Path) -> str:
    """The MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_files(packages_dir: Path, package: Package) -> Tuple[Path, Path]:
    done = packages_dir / package.filename
    return done, done.with_name(done.name + ".part")


def _check_space(root: Path, todo: Sequence[Package], packages_dir: Path, options: DownloadOptions) -> None:
    if not options.check_space:
        return
    if any(p.size is None for p in todo):
        logger.warning("the package list gives no size for some packages: free space is checked for the others only")
    need = required_space(todo, packages_dir, options.jobs, options.keep_packages)
    free = shutil.disk_usage(root).free
    if need > free:
        raise DownloadError(f"{root}: expected at least {need / 1e9:.1f} GB free for {len(todo)} package(s), "
                            f"got {free / 1e9:.1f} GB")


def _run_all(todo: Sequence[Package], work: Callable[[Package], bool], jobs: int,
             stop: threading.Event) -> Dict[str, object]:
    """`{filename: fetched (bool) or the exception}` for every package, `jobs` at a time."""
    results: Dict[str, object] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="download") as pool:
        futures = {pool.submit(work, p): p.filename for p in todo}
        try:
            for future in concurrent.futures.as_completed(futures):
                error = future.exception()
                results[futures[future]] = error if error is not None else future.result()
        except KeyboardInterrupt:
            stop.set()  # every transfer ends within one chunk; its .part file stays for a rerun
            for future in futures:
                future.cancel()
            raise
    return {p.filename: results[p.filename] for p in todo}


def _fetch_and_unpack(package: Package, packages_dir: Path, target: Path, top_folder: str,
                      options: DownloadOptions, bar: "_ByteBar", stop: threading.Event) -> bool:
    zip_path, fetched = _fetch_verified(package, packages_dir, options, bar, stop)
    try:
        unpack_package(zip_path, target, package.md5, top_folder)
    except ValueError as err:
        raise DownloadError(f"{zip_path}: cannot unpack: {err}") from err
    if not options.keep_packages:
        zip_path.unlink()
    return fetched


def _fetch_verified(package: Package, packages_dir: Path, options: DownloadOptions, bar: "_ByteBar",
                    stop: threading.Event) -> Tuple[Path, bool]:
    """The package's verified file; fetched again once when its size or MD5 is wrong."""
    done, _ = _local_files(packages_dir, package)
    fetched = False
    for attempt in (1, 2):
        if not done.exists():
            _fetch(package, packages_dir, options, bar, stop)
            fetched = True
        problem = _verify(done, package)
        if problem is None:
            return done, fetched
        done.unlink()
        if attempt == 1:
            logger.warning("%s: %s; removed it, fetching it again", package.filename, problem)
            bar.add_total(package.size or 0)
    raise DownloadError(f"{package.filename}: {problem} again after fetching it twice (the file was removed; "
                        f"from {package.url})")


def _verify(path: Path, package: Package) -> Optional[str]:
    size = path.stat().st_size
    if package.size is not None and size != package.size:
        return f"expected {package.size} bytes, got {size}"
    md5 = file_md5(path)
    return None if md5 == package.md5 else f"expected MD5 {package.md5}, got {md5}"


def _fetch(package: Package, packages_dir: Path, options: DownloadOptions, bar: "_ByteBar",
           stop: threading.Event) -> None:
    """Transfer into `.part` (resuming it), retrying broken transfers, then rename it."""
    done, part = _local_files(packages_dir, package)
    for attempt in range(options.retries + 1):
        try:
            _transfer(package, part, options.timeout, bar, stop)
            break
        except _Transient as err:
            if attempt == options.retries:
                kept = f"; {part.name} is kept and a rerun resumes it" if part.exists() else ""
                raise DownloadError(f"{package.url}: transfer failed after {attempt + 1} attempt(s): {err}{kept}"
                                    ) from None
            wait = options.backoff * 2 ** attempt
            logger.warning("%s: %s; resuming in %.0f s", package.filename, err, wait)
            if stop.wait(wait):
                raise DownloadError(f"{package.filename}: stopped") from None
    part.replace(done)


def _transfer(package: Package, part: Path, timeout: float, bar: "_ByteBar", stop: threading.Event) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if package.size is not None and offset >= package.size:
        if offset == package.size:
            return  # an earlier run got every byte and stopped before the rename
        part.unlink()
        offset = 0
    headers = {"User-Agent": "avsc-pipeline"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(package.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return  # nothing after `offset`: the .part is whole (its MD5 decides)
        if err.code in (404, 410):
            raise DownloadError(f"{package.url}: not found (HTTP {err.code}); the package list may be out of "
                                "date") from None
        if err.code >= 500 or err.code == 429:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise DownloadError(f"{package.url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, HTTPException, OSError) as err:
        raise _Transient(f"cannot connect: {getattr(err, 'reason', err)}") from None
    with response:
        if offset and response.status != 206:
            logger.info("%s: the server ignored the range request; starting again", package.filename)
            bar.add_total(offset)
            offset = 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else package.size
        got = _copy_body(response, part, offset, bar, stop)
    if expected is not None and got < expected:
        raise _Transient(f"connection closed after {got} of {expected} bytes")


def _copy_body(response, part: Path, offset: int, bar: "_ByteBar", stop: threading.Event) -> int:
    """Append the response body to `part` (truncated to `offset` first); returns its new size."""
    with open(part, "r+b" if offset else "wb") as sink:
        sink.seek(offset)
        sink.truncate()
        while True:
            if stop.is_set():
                raise DownloadError(f"{part.name}: stopped")
            try:
                chunk = response.read(_CHUNK)
            except (HTTPException, OSError) as err:
                raise _Transient(f"connection broken after {sink.tell()} bytes ({err})") from None
            if not chunk:
                return sink.tell()
            sink.write(chunk)
            bar.update(len(chunk))


class _ByteBar:
    """One tqdm bar over the bytes of every package, updated from the transfer threads."""

    def __init__(self, todo: Sequence[Package], packages_dir: Path, enabled: bool, desc: str) -> None:
        from tqdm import tqdm

        left = 0
        for package in todo:
            done, part = _local_files(packages_dir, package)
            if not done.exists() and package.size is not None:
                left += max(0, package.size - (part.stat().st_size if part.exists() else 0))
        self._lock = threading.Lock()
        self._bar = tqdm(total=left, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                         disable=not enabled, smoothing=0.05)

    def update(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def add_total(self, n: int) -> None:
        with self._lock:
            self._bar.total += n
            self._bar.refresh()

    def __enter__(self) -> "_ByteBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


def parse_parts(text: str) -> List[str]:
    """`"meta,audio"` to `["meta", "audio"]`, each checked against `PARTS`."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"expected --parts out of {','.join(PARTS)}, got {text!r}")
    return parts

