"""Atomic file writes: write a temporary file beside the target, fsync it, then ``os.replace``.

A reader sees either the old file or the complete new one, never a partial write. A crash
leaves at most a hidden ``.<name>.<random>.tmp`` file beside the target. Files get the usual
permissions (``0o666`` less the umask), so a cache shared between users stays readable.
Folders written beside their target are put in place by ``replace_dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (new names, renames) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: Path, target: Path, aside: Path) -> None:
    """Rename the complete folder ``tmp`` onto ``target`` and fsync their parent.

    A folder cannot be renamed onto a non-empty one, so an existing ``target`` is first moved to
    ``aside`` (a free name beside it), put back if the rename fails, and deleted once the new
    folder is in place: a failure loses neither, and a reader finds the old folder or the new
    one, complete, except between the two renames (microseconds), when ``target`` is absent
    and a reader sees no folder at all (two renames cannot be one atomic step).
    """
    old = None
    if target.exists():
        os.replace(target, aside)
        old = aside
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit, fsync it and move it onto ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (``kwargs`` go to ``open``, e.g. ``encoding``). If the block
    raises, the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        f = open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically. Returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically. Returns the path."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (sorted keys, no NaN/Inf) to ``path`` atomically. Returns the path.

    The object is serialised before the file is opened, so a non-JSON-able value raises
    (``TypeError``/``ValueError``) without touching ``path``.
    """
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save ``array`` as a plain ``.npy`` file (no pickled objects) atomically. Returns the path.

    Unlike ``np.save``, no ``.npy`` suffix is appended to ``path``.
    """
    array = np.asanyarray(array)
    with atomic_open(path, "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)
    return Path(path)
