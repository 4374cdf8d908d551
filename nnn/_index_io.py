"""Saved-index directories: atomic publication, metadata, digests, guarded FAISS reads.

A saved index (``ReferenceIndex.save``, ``nnn.index.NNNIndex.save``) is one directory::

    <path>/meta.json     format, kind, shapes, sha256 digests, parameters, library versions
    <path>/index.faiss   the FAISS index, written by FAISS's own ``write_index``
    <path>/*.npy         arrays the index needs beside it (e.g. the references), if any

It is written into a hidden sibling ``.<name>.<host>-<pid>-<random>.tmp/`` (every file fsynced,
``meta.json`` last) and renamed onto ``<path>`` once complete (``publish_dir``), so a crash
leaves the old index or none, never half of one; the next publication beside it deletes such
a folder once the process that wrote it is gone. An existing ``<path>`` is replaced only with
``overwrite=True``, and only after the new index is complete.

Loading checks ``meta.json`` (format, kind) and the size of every file it lists before FAISS
reads anything; a missing, truncated or garbled file raises one ``ValueError`` line naming it
and what to do (``read_meta``, ``read_faiss``).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from nnn._atomic import atomic_write_json, fsync_dir, replace_dir

#: bump when the layout of a saved index changes; a reader refuses other formats
FORMAT = 1
META_FILE = "meta.json"
FAISS_FILE = "index.faiss"
#: rows hashed at a time by ``array_digest`` (bounds its float32 copies)
_DIGEST_BYTES = 1 << 24
_FILE_CHUNK = 1 << 22

# The folded index's kinds and default parameters (``nnn.index``) live here, with no torch
# import, so that ``nnn-index --help`` builds its parser in a fifth of a second.
KINDS = ("flat", "ivf", "hnsw")
DEFAULT_CHUNK_ROWS = 65536
#: folded rows are padded with zeros to a multiple of this many floats (``folded_width``)
DEFAULT_ALIGN = 1
#: IVF: lists probed by default; HNSW: graph links per node, build and search beam widths
DEFAULT_NPROBE, DEFAULT_HNSW_M, DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH = 16, 32, 80, 64


class RowsDigest:
    """An incremental ``array_digest`` of an (n, d) array fed in consecutive row blocks."""

    def __init__(self, n: int, d: int):
        self._hash = hashlib.sha256(f"float32:{n}x{d}:".encode())

    def update(self, rows) -> None:
        self._hash.update(np.ascontiguousarray(rows, dtype=np.float32).view(np.uint8))

    def hexdigest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


def array_digest(x, *, chunk_bytes: int = _DIGEST_BYTES) -> str:
    """``"sha256:<hex>"`` of a 2-D array as float32 C-order bytes, with its shape.

    Streamed in row chunks, so a memory-mapped array of any size is hashed in bounded memory.
    Two arrays get the same digest exactly when they have the same shape and the same float32
    values (bit for bit).
    """
    if x.ndim != 2:
        raise ValueError(f"array_digest hashes (n, d) arrays, got shape {tuple(x.shape)}")
    n, d = x.shape
    digest = RowsDigest(n, d)
    rows = max(1, chunk_bytes // max(4 * d, 1))
    for start in range(0, n, rows):
        digest.update(x[start:start + rows])
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """``"sha256:<hex>"`` of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_FILE_CHUNK):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def library_versions() -> dict[str, str]:
    """The versions of nnn-hubness (else ``nnn.__version__``) and FAISS that write an index."""
    from nnn import __version__

    try:
        nnn_version = importlib.metadata.version("nnn-hubness")
    except importlib.metadata.PackageNotFoundError:
        nnn_version = __version__
    import faiss

    return {"nnn-hubness": nnn_version, "faiss": faiss.__version__, "numpy": np.__version__}


def temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{socket.gethostname()}-{os.getpid()}-"
                            f"{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete the temporary folders (or files) of ``target`` left by killed writers on this host
    (their process is gone). Those of live writers and of other hosts are kept. Returns the
    removed."""
    removed = []
    host = socket.gethostname()
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        owner = tmp.name[len(target.name) + 2:-len(".tmp")]         # <host>-<pid>-<random>
        who, _, _ = owner.rpartition("-")
        tmp_host, _, pid = who.rpartition("-")
        if tmp_host == host and pid.isdigit() and not _pid_alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _saved_kind(target: Path) -> str | None:
    """The kind recorded in ``target/meta.json``, or None when ``target`` is not a saved index
    folder (a file, a foreign folder, an unreadable ``meta.json``)."""
    try:
        meta = json.loads((target / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return meta.get("kind") if isinstance(meta, dict) else None


def _is_npy(target: Path) -> bool:
    """Whether ``target`` is a regular file (not a link, FIFO or device) holding a .npy array."""
    if target.is_symlink() or not target.is_file():
        return False
    try:
        with open(target, "rb") as fh:
            return fh.read(6) == b"\x93NUMPY"
    except OSError:
        return False


def refuse_existing(target: Path, overwrite: bool, what: str, kind: str | None = None) -> None:
    """``FileExistsError`` when ``target`` exists and ``overwrite`` is false, and also when it is
    not what ``overwrite`` may replace: a saved index folder whose ``meta.json`` says ``kind``,
    or, with ``kind=None``, a ``.npy`` file. Anything else (a data file, a foreign folder, the
    gallery itself) is never deleted."""
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"{what} {str(target)!r} already exists; pass overwrite=True "
                              "(CLI: --overwrite) to replace it once the new one is complete, "
                              "or choose another path")
    if target.is_symlink():
        found = "a symbolic link (it and what it points to are kept)"
    elif kind is None:
        if _is_npy(target):
            return
        found = "a folder" if target.is_dir() else "not a .npy file"
    else:
        found_kind = _saved_kind(target) if target.is_dir() else None
        if found_kind == kind:
            return
        found = (f"a saved {found_kind!r}, not a {what}" if found_kind else
                 "a folder without a saved index's meta.json" if target.is_dir() else
                 "a file, not a saved index folder")
    raise FileExistsError(f"{str(target)!r} exists and is {found}; overwrite replaces only a "
                          f"{what} written by nnn, so it was left untouched; choose another "
                          "path, or remove it yourself if it is meant to go")


@contextmanager
def publish_dir(target, *, kind: str, overwrite: bool = False,
                what: str = "index") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block completes, fsync it and
    rename it onto ``target`` (module doc). If the block raises, the folder is deleted and
    ``target`` is left as it was. Refuses an existing ``target`` unless ``overwrite`` and it is
    a saved index of ``kind`` (``refuse_existing``; checked before the block runs and again
    before the rename)."""
    target = Path(target)
    refuse_existing(target, overwrite, what, kind)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {what} {str(target)!r}: its folder "
                                f"{str(target.parent)!r} does not exist; create it first")
    remove_stale_temps(target)
    tmp = temp_name(target)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        refuse_existing(target, overwrite, what, kind)
        try:
            replace_dir(tmp, target, aside=temp_name(target))
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise FileExistsError(f"{what} {str(target)!r} was written by another process while "
                                  "this one was being written; theirs is kept and this one "
                                  "discarded: rerun if this one should replace it") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_meta(folder: Path, meta: dict) -> None:
    """``meta.json`` in ``folder`` with the format number and the size and digest of every
    other file already in it (call it last)."""
    files = {f.name: {"bytes": f.stat().st_size, "sha256": file_digest(f)}
             for f in sorted(folder.iterdir()) if f.name != META_FILE}
    atomic_write_json(folder / META_FILE, {"format": FORMAT, **meta, "files": files})


def read_meta(path, kind: str, what: str, rebuild: str) -> dict:
    """The checked ``meta.json`` of the saved index ``path`` of ``kind``: it parses, has this
    format and kind, and every file it lists exists with its recorded size. ``rebuild`` says how
    to write the index again (part of every error)."""
    path = Path(path)
    meta_file = path / META_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist (or is not a folder); "
                                f"{rebuild}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{what} {str(path)!r} has no {META_FILE} (an incomplete or foreign "
                         f"folder); {rebuild}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {str(meta_file)!r} is truncated or corrupt ({err}); "
                         f"{rebuild}") from None
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        found = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{str(path)!r} is not a saved {what} (its {META_FILE} says kind "
                         f"{found!r}, expected {kind!r}); {rebuild}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{what} {str(path)!r} has format {meta.get('format')!r}; this version "
                         f"reads format {FORMAT}; {rebuild}")
    for name, info in meta.get("files", {}).items():
        f = path / name
        size = f.stat().st_size if f.is_file() else None
        if size != info["bytes"]:
            state = "is missing" if size is None else f"has {size} bytes, not {info['bytes']}"
            raise ValueError(f"{what} file {str(f)!r} {state} (truncated or replaced); "
                             f"{rebuild}")
    return meta


def verify_files(path: Path, meta: dict, what: str, rebuild: str) -> None:
    """Re-hash every file listed in ``meta`` (a full read): ``ValueError`` on a changed byte."""
    for name, info in meta.get("files", {}).items():
        if file_digest(path / name) != info["sha256"]:
            raise ValueError(f"{what} file {str(path / name)!r} does not match the sha256 in its "
                             f"{META_FILE} (corrupt or replaced); {rebuild}")


def read_faiss(file: Path, what: str, rebuild: str):
    """``faiss.read_index(file)``; a file FAISS cannot parse raises a one-line ``ValueError``."""
    import faiss

    try:
        return faiss.read_index(str(file))
    except RuntimeError as err:  # FAISS's C++ exceptions, e.g. "read error" on a short file
        # "Error in <signature> at <file>.cpp:<line>: <what>": keep <what>
        first = re.sub(r"^Error in .*? at \S+:\d+: ", "", " ".join(str(err).split()))[:200]
        raise ValueError(f"{what} file {str(file)!r} is truncated or corrupt (FAISS: {first}); "
                         f"{rebuild}") from None


def check_digest(expected: str, got: str, what: str, claimed: str, *,
                 plural: bool = False) -> None:
    """``ValueError`` when the references an index was built with (``expected``) are not the
    ones claimed (``got``); ``plural``: ``what`` names several things (shards)."""
    if expected != got:
        were, it = ("were", "they") if plural else ("was", "it")
        raise ValueError(f"{what} {were} built with other references than {claimed} (digest "
                         f"{expected[:19]}... recorded, {got[:19]}... given); pass the "
                         f"references {it} {were} built with, or rebuild from these")
