"""Row ranges of a large embedding file, read without loading the whole file.

``open_rows(path)`` returns a ``RowSource`` over an (n, d) floating array in a ``.npy`` file
(memory-mapped, ``np.load(mmap_mode="r")``) or a ``.safetensors`` file holding one tensor
(``safetensors.safe_open(...).get_slice``: only the requested rows are read). ``rows(start,
stop)`` returns those rows as a C-contiguous float32 array, so a gallery larger than RAM can be
processed chunk by chunk (``chunks``). The file's header is checked when it is opened: a
missing, empty, truncated or garbled file, or one that does not hold a 2-D floating array,
raises a one-line error naming it (as ``nnn.data.precomputed.load_array`` does for whole files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from nnn._arrays import check_positive_int
from nnn.data.precomputed import _existing_file, _unreadable

#: the formats whose rows can be read without reading the whole file
ROW_SUFFIXES = (".npy", ".safetensors")
_REDO = "write it again as an (n, d) float array (np.save or safetensors)"


class RowSource:
    """An (n, d) floating array on disk; ``shape``, ``path``, ``rows(start, stop)``, ``chunks``."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        self._name = f"{what} file {str(path)!r}"
        self._array = self._slice = None
        if path.suffix.lower() == ".npy":
            self._array = _guarded(self._name, np.load, path, mmap_mode="r", allow_pickle=False)
            shape, kind = self._array.shape, self._array.dtype.kind
        else:
            self._slice = _safetensors_slice(path, self._name)
            shape, dtype = tuple(self._slice.get_shape()), self._slice.get_dtype()
            # F16/F32/F64, BF16, F8_*; not BOOL, I*, U*
            kind = "f" if dtype.startswith(("F", "BF")) else dtype.lower()
        if len(shape) != 2 or kind != "f" or 0 in shape:
            raise ValueError(f"{self._name} holds shape {tuple(shape)} of {kind!r} values; "
                             "expected a non-empty (n, d) float array")
        self.shape = (int(shape[0]), int(shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a C-contiguous float32 (stop - start, d) array (a copy)."""
        if self._slice is None:
            return np.ascontiguousarray(self._array[start:stop], dtype=np.float32)
        block = self._slice[start:stop]                                   # a torch tensor
        return np.ascontiguousarray(block.float().numpy(), dtype=np.float32)

    def chunks(self, start: int, stop: int, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, rows)`` for consecutive blocks of at most ``chunk_rows`` rows of
        [start, stop)."""
        chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
        for s in range(start, stop, chunk_rows):
            yield s, self.rows(s, min(s + chunk_rows, stop))


class ArrayRows(RowSource):
    """A ``RowSource`` over an array already in memory (or memory-mapped by the caller)."""

    def __init__(self, array, what: str = "gallery"):
        if array.ndim != 2 or array.dtype.kind != "f" or 0 in array.shape:
            raise ValueError(f"{what} must be a non-empty (n, d) float array, got shape "
                             f"{tuple(array.shape)} dtype {array.dtype}")
        self.path, self.what, self._name = None, what, what
        self._array, self._slice = array, None
        self.shape = (int(array.shape[0]), int(array.shape[1]))


def as_rows(gallery, what: str = "gallery") -> RowSource:
    """``gallery`` as a ``RowSource``: one already, a path (``open_rows``) or an array."""
    if isinstance(gallery, RowSource):
        return gallery
    if isinstance(gallery, (str, Path)):
        return open_rows(gallery, what)
    if hasattr(gallery, "detach"):  # a torch tensor
        gallery = gallery.detach().cpu().float().numpy()
    return ArrayRows(np.asarray(gallery), what)


def _guarded(name: str, read, *args, **kwargs):
    """``read(*args, **kwargs)``; what the format's library raises becomes ``_unreadable``'s
    one-line ``ValueError``."""
    try:
        return read(*args, **kwargs)
    except Exception as err:  # ValueError, OSError (a short mmap), SafetensorError, ...
        raise _unreadable(name, err, _REDO) from err


def _safetensors_slice(path: Path, name: str):
    """The slice handle of the one tensor in a safetensors file (read as torch tensors, which
    also covers bfloat16)."""
    from safetensors import safe_open

    handle = _guarded(name, safe_open, str(path), framework="pt", device="cpu")
    keys = list(handle.keys())
    if len(keys) != 1:
        raise ValueError(f"{name} holds {len(keys)} tensors {sorted(keys)[:10]}; save exactly "
                         "one tensor per file")
    return handle.get_slice(keys[0])


def open_rows(path, what: str = "gallery") -> RowSource:
    """A ``RowSource`` over the (n, d) array in ``path`` (.npy or .safetensors)."""
    path = _existing_file(path, what, "an (n, d) float array saved as .npy or .safetensors",
                          ROW_SUFFIXES)
    return RowSource(path, what)
