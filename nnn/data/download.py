"""Checksummed, atomic downloads and archive extraction for the dataset loaders.

- ``fetch(remote, dest_dir)``: stream a URL into a hidden ``.<filename>.part`` file beside the
  target while hashing it (md5 and sha256), check the size and the expected checksum, then
  ``os.replace`` it into place. On a mismatch the partial file is deleted and ``ChecksumError``
  raised, so a corrupt download never sits under the final name; a download cut off midway (an
  error, or fewer bytes than the expected size or the server's Content-Length) keeps its
  ``.part`` file and the next call resumes it (HTTP Range). A file already there is verified
  instead of downloaded again (so a file fetched by hand, e.g. with ``wget -c``, is used as is).
  ``filename`` must be a plain name: one with folders, ``..`` or an absolute path is refused.
- Files without a published checksum are trusted on first use: their sha256 is computed on the
  first download and recorded in ``<dest_dir>/checksums.json``; later verifications use it.
- ``extract_member`` / ``extract_dir``: unpack one file or one top-level folder of a zip archive
  into place atomically (temporary name, then rename); member paths that would escape the target
  are refused, and a truncated or damaged archive raises a one-line ``ValueError`` naming it.
- Every write holds a per-target lock (``.<name>.lock`` beside it), so one process writes while
  the others wait, and the lock holder deletes ``.<name>.*.tmp`` leftovers of killed writers.

The opener is a parameter (default ``urllib.request.urlopen``), so tests use ``file://`` URLs
or a fake server response; they never touch the network.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from filelock import FileLock
from tqdm.auto import tqdm

from nnn._atomic import atomic_open, atomic_write_json, fsync_dir

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.json"
_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A downloaded or existing file does not match its expected size or checksum."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: url, local filename, and what is known about it (any may be None)."""

    url: str
    filename: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self):
        name = self.filename
        if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
                or Path(name).is_absolute()):
            raise ValueError(f"download filename {name!r} (for {self.url}) must be a plain file "
                             "name without folders, '..' or an absolute path; it is written "
                             "inside the download folder")


def file_digests(path: Path, *, progress: bool = False) -> dict:
    """{"size", "md5", "sha256"} of a file, read once in 1 MiB chunks."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                      desc=f"verify {path.name}", disable=not progress) as bar:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return {"size": size, "md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def _recorded(dest_dir: Path) -> dict:
    path = dest_dir / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ChecksumError(f"{path} is not valid JSON ({e}); delete it to record checksums "
                            "again on the next download") from e


def _expected(remote: RemoteFile, dest_dir: Path) -> dict:
    """The size/md5/sha256 to check against: the published ones, else the recorded ones."""
    known = {k: v for k, v in (("size", remote.size), ("md5", remote.md5),
                               ("sha256", remote.sha256)) if v is not None}
    if "md5" in known or "sha256" in known:
        return known
    rec = _recorded(dest_dir).get(remote.filename, {})
    return {**{k: rec[k] for k in ("size", "sha256") if k in rec}, **known}


def _mismatches(got: dict, expected: dict) -> list[str]:
    return [f"{k}: expected {expected[k]}, got {got[k]}" for k in ("size", "md5", "sha256")
            if k in expected and str(expected[k]).lower() != str(got[k]).lower()]


def _record(dest_dir: Path, remote: RemoteFile, got: dict) -> None:
    """Add ``remote``'s size and sha256 to ``checksums.json``, under that file's own lock, so
    that processes fetching different files into one folder never lose each other's records."""
    with _writing(dest_dir / CHECKSUMS_FILE):
        rec = _recorded(dest_dir)
        rec[remote.filename] = {"url": remote.url, "size": got["size"], "sha256": got["sha256"],
                                "recorded": datetime.now(timezone.utc).isoformat(
                                    timespec="seconds")}
        atomic_write_json(dest_dir / CHECKSUMS_FILE, rec)
    log.warning("%s has no published checksum; recorded sha256 %s (%d bytes) in %s on first "
                "download (trust on first use)", remote.filename, got["sha256"], got["size"],
                dest_dir / CHECKSUMS_FILE)


def fetch(remote: RemoteFile, dest_dir: str | Path, *, opener: Callable | None = None,
          progress: bool = True) -> Path:
    """Download ``remote`` to ``dest_dir/remote.filename`` (verified, atomic); returns the path.

    An existing file is verified, not re-downloaded; a mismatch raises ``ChecksumError`` naming
    the file (delete it to download again). The bytes go to ``.<filename>.part`` first; a
    download cut off (network error, Ctrl-C, killed process) keeps it, and the next call resumes
    it with an HTTP Range request (starting over when the server ignores the range). A per-file
    lock ``.<filename>.lock`` lets one process download while the others wait. ``opener`` maps a
    ``urllib.request.Request`` to a response (default ``urlopen`` with a 60 s timeout).
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / remote.filename
    with _writing(target):
        expected = _expected(remote, dest_dir)
        if target.exists():
            bad = _mismatches(file_digests(target, progress=progress), expected)
            if bad:
                raise ChecksumError(f"existing file {target} does not match {remote.url} "
                                    f"({'; '.join(bad)}); delete it to download it again")
            log.info("%s: present and verified", target)
            return target
        part = dest_dir / f".{remote.filename}.part"
        got = _download(remote, part, expected, opener, progress)
        bad = _mismatches(got, expected)
        if bad:
            part.unlink()
            raise ChecksumError(f"download of {remote.url} is corrupt or incomplete "
                                f"({'; '.join(bad)}); nothing was kept, try again")
        if "md5" not in expected and "sha256" not in expected:
            # recorded before the rename: a kill in between leaves a .part that the next call
            # checks against this record, never a file in place that is not recorded
            _record(dest_dir, remote, got)
        os.replace(part, target)
        fsync_dir(dest_dir)
    return target


def _download(remote: RemoteFile, part: Path, expected: dict, opener: Callable | None,
              progress: bool) -> dict:
    """Append the rest of ``remote`` to ``part`` (fsynced); returns its size/md5/sha256."""
    have = part.stat().st_size if part.exists() else 0
    if have and expected.get("size") is not None and have >= expected["size"]:
        return file_digests(part, progress=progress)  # complete, unchecked (killed verifying)
    opener = opener or (lambda request: urllib.request.urlopen(request, timeout=60))
    request = urllib.request.Request(remote.url)
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with opener(request) as response:
            resumed = have > 0 and getattr(response, "status", None) == 206
            if have:
                log.info("%s: %s", remote.filename,
                         f"resuming after {have} bytes" if resumed else "the server cannot "
                         "resume; downloading again from the start")
            log.info("downloading %s -> %s", remote.url, part.parent / remote.filename)
            length = getattr(response, "headers", {}).get("Content-Length")
            announced = int(length) + (have if resumed else 0) if length else None
            total = expected.get("size") or announced
            with open(part, "ab" if resumed else "wb") as out, \
                    tqdm(total=total, unit="B", unit_scale=True, desc=remote.filename,
                         disable=not progress) as bar:
                md5, sha, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
                if resumed:  # hash what is already there
                    with open(part, "rb") as f:
                        while chunk := f.read(_CHUNK):
                            md5.update(chunk)
                            sha.update(chunk)
                            size += len(chunk)
                    bar.update(size)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            # urllib returns b"" when the server closes the connection early: an interrupted
            # download (kept and resumed), not a complete file to verify or to trust on first use
            end = announced if announced is not None else expected.get("size")
            if end is not None and size < end:
                raise OSError(f"the connection closed after {size} of {end} bytes")
    except urllib.error.HTTPError as e:
        if have and e.code == 416:  # "range not satisfiable": the partial file is complete
            return file_digests(part, progress=progress)
        raise _download_error(remote, part, e) from e
    except (OSError, http.client.HTTPException) as e:  # HTTPException: e.g. IncompleteRead
        raise _download_error(remote, part, e) from e
    return {"size": size, "md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def _download_error(remote: RemoteFile, part: Path, e: Exception) -> OSError:
    """The one-line error for a failed download, saying what was kept for the next try."""
    kept = (f"; the {part.stat().st_size} bytes received are kept in {part} and the next try "
            "resumes there" if part.exists() and part.stat().st_size else "")
    return OSError(f"could not download {remote.url} to {part.parent / remote.filename}: "
                   f"{e}{kept}. Check the network, or fetch it by hand into {part.parent} "
                   "(docs/data.md)")


def _safe_members(archive: zipfile.ZipFile, dest: Path) -> None:
    root = dest.resolve()
    for name in archive.namelist():
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts or not (root / name).resolve().is_relative_to(root):
            raise ValueError(f"archive {archive.filename} holds an unsafe member path {name!r}")


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Hold ``target``'s lock (``.<name>.lock`` beside it, created with its folder), after
    deleting the hidden ``.<name>.*.tmp`` files or folders that a killed writer left: with the
    lock held, no live process is writing them."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        for leftover in target.parent.glob(f".{target.name}.*.tmp"):
            log.info("removing %s left by an interrupted download or extraction", leftover)
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        yield


@contextmanager
def _corrupt_archive_explained(archive_path: Path) -> Iterator[None]:
    """What zipfile raises for a truncated or damaged archive (no central directory, a bad
    CRC, a cut deflate stream) becomes a one-line ``ValueError`` naming the archive and the
    remedy; the target stays as it was (the writes are atomic)."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ValueError(f"archive {archive_path} is truncated or corrupt ({type(err).__name__}: "
                         f"{err}); delete it (and its entry in {CHECKSUMS_FILE} beside it, if "
                         "any) and run again to download it again, or fetch it by hand "
                         "(docs/data.md)") from err


def extract_member(archive_path: Path, member_name: str, target: Path) -> Path:
    """Write the archive member whose file name is ``member_name`` (any folder) to ``target``."""
    with _corrupt_archive_explained(archive_path), zipfile.ZipFile(archive_path) as archive:
        matches = [n for n in archive.namelist() if PurePosixPath(n).name == member_name]
        if not matches:
            raise ValueError(f"{archive_path} holds no file named {member_name!r}")
        with _writing(target), archive.open(matches[0]) as src, \
                atomic_open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    return target


def extract_dir(archive_path: Path, member_dir: str, target: Path, *,
                progress: bool = True) -> Path:
    """Unpack the archive's top-level folder ``member_dir`` as ``target`` (atomic rename).

    Extraction happens in a hidden temporary folder beside ``target``; ``target`` appears only
    once every file is written, so its presence means a complete extraction. A per-target lock
    ``.<name>.lock`` lets one process extract while the others wait; the lock holder deletes
    temporary folders left by a killed extraction.
    """
    if target.exists():
        return target
    with _writing(target):
        if target.exists():  # another process finished it while this one waited
            return target
        return _extract_dir_locked(archive_path, member_dir, target, progress)


def _extract_dir_locked(archive_path: Path, member_dir: str, target: Path,
                        progress: bool) -> Path:
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()
    try:
        with _corrupt_archive_explained(archive_path), zipfile.ZipFile(archive_path) as archive:
            _safe_members(archive, tmp)
            prefix = member_dir.rstrip("/") + "/"
            members = [m for m in archive.infolist() if m.filename.startswith(prefix)]
            if not members:
                raise ValueError(f"{archive_path} has no folder {member_dir!r}")
            for m in tqdm(members, desc=f"extract {archive_path.name}", unit="file",
                          disable=not progress):
                archive.extract(m, tmp)
        os.replace(tmp / member_dir, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
