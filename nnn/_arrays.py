"""Input checking shared by every numeric routine.

Each public entry point coerces its arrays once, here, into C-contiguous float32 NumPy arrays
(or keeps torch tensors on their device), and raises ``ValueError`` naming the argument, its
shape and what to do when the input is unusable.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Rows whose norm differs from 1 by more than this count as "not L2-normalised".
NORM_TOLERANCE = 1e-3
#: rows checked at a time in ``as_matrix`` (bounds its temporaries to a few MB)
_CHECK_ROWS = 8192
#: Largest row norm accepted without normalising: the dot product of two rows is at most the
#: product of their norms (Cauchy-Schwarz, also for every partial sum), so it stays below
#: float32's maximum (3.4e38) and no score becomes inf.
MAX_ROW_NORM = float(np.sqrt(np.finfo(np.float32).max))


class NotNormalizedWarning(UserWarning):
    """Rows that are not L2-normalised were given without ``normalize=True``."""


#: the ``warnings.filters`` list in force when ``NotNormalizedWarning`` was last shown
_norm_warned_under: list = []


#: where the ``normalize=True`` of the library is set from the command line
_NORMALIZE_ELSEWHERE = ("run.py: method.normalize=true, or dataset.normalize=true for "
                        "precomputed embeddings; nnn-index: --normalize")


def as_matrix(x, name: str, *, dim: int | None = None, normalize: bool = False) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 ``(n, d)`` NumPy array, checked.

    Accepts NumPy arrays and torch tensors (any device). Raises ``ValueError`` for a wrong number
    of dimensions, a non-floating dtype, an empty array, a dimension that differs from ``dim``,
    or NaN/Inf values. Rows that are not unit-norm give a warning, or are normalised (in a copy)
    when ``normalize`` is true. The caller's array is never modified.
    """
    out = _checked_float32(x, name, dim)
    norms = _row_norms(out, name)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if not off.any():
        return out
    if normalize:
        if (norms == 0).any():
            raise ValueError(f"{name} has all-zero rows {np.flatnonzero(norms == 0)[:5].tolist()}"
                             "; they cannot be L2-normalised")
        unit = np.empty_like(out)
        for start in range(0, len(out), _CHECK_ROWS):  # divided in float64, rounded once
            stop = start + _CHECK_ROWS
            unit[start:stop] = out[start:stop] / norms[start:stop, None]
        return unit
    if norms.max() > MAX_ROW_NORM:
        row = int(norms.argmax())
        raise ValueError(f"{name} row {row} has norm {norms[row]:.4g}; dot products of rows "
                         f"with norms above {MAX_ROW_NORM:.3g} overflow float32 to inf. Pass "
                         f"normalize=True ({_NORMALIZE_ELSEWHERE}), or scale the embeddings "
                         "down")
    _warn_not_normalised(f"{name}: {int(off.sum())} of {len(out)} rows are not L2-normalised "
                         f"(norms in [{norms.min():.4g}, {norms.max():.4g}]); pass "
                         f"normalize=True ({_NORMALIZE_ELSEWHERE}) to normalise them (shown "
                         "once; other inputs may be affected too)")
    return out


def owned_matrix(x, name: str, *, dim: int | None = None, normalize: bool = False) -> np.ndarray:
    """``as_matrix(x, ...)`` in memory of its own: copied when the checked array would share
    memory with ``x`` (a float32 C-contiguous NumPy array or CPU torch tensor), so that state
    kept from it does not change when the caller edits ``x`` later."""
    out = as_matrix(x, name, dim=dim, normalize=normalize)
    if isinstance(x, torch.Tensor):
        x = x.detach().numpy() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    return out.copy() if isinstance(x, np.ndarray) and np.shares_memory(out, x) else out


def _checked_float32(x, name: str, dim: int | None) -> np.ndarray:
    """``as_matrix``'s type, dtype and shape checks; ``x`` as C-contiguous float32 (n, d)."""
    if isinstance(x, torch.Tensor):
        if not torch.is_floating_point(x):
            raise ValueError(f"{name} must hold floating-point values, got torch dtype {x.dtype}; "
                             "cast it with .float()")
        x = x.detach().to("cpu", torch.float32).numpy()
    elif not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must hold floating-point values, got dtype {x.dtype}; "
                         "cast it with .astype(np.float32)")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(x.shape)}; "
                         "use x[None, :] for a single vector")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); it needs at least one row "
                         "and one column")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]} (shape {tuple(x.shape)}) but "
                         f"{dim} was expected; all embeddings must come from the same model")
    return np.ascontiguousarray(x, dtype=np.float32)


def _row_norms(out: np.ndarray, name: str) -> np.ndarray:
    """(n,) float64 L2 norms of the rows of ``out`` (n, d); ``ValueError`` on NaN/Inf."""
    # Norms in float64: squares of float32 values above ~1.8e19 (or below ~1e-23) overflow
    # (underflow) in float32, which made a finite row's norm inf (0).
    norms = np.empty(len(out), dtype=np.float64)
    # Row blocks: checking a 591,753 x 512 bank at once would build a 1.2 GB temporary.
    for start in range(0, len(out), _CHECK_ROWS):
        block = out[start:start + _CHECK_ROWS]
        finite = np.isfinite(block)
        if not finite.all():
            bad = np.argwhere(~finite)[:5] + [start, 0]
            raise ValueError(f"{name} contains NaN or Inf (first at rows/cols {bad.tolist()}); "
                             "clean or drop those rows before fitting")
        norms[start:start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block,
                                                            dtype=np.float64))
    return norms


def _warn_not_normalised(message: str) -> None:
    """Emit ``NotNormalizedWarning`` once: a run checks the same embeddings in many roles
    (gallery, banks, queries; once per method and split), which printed ~10 warnings.

    Like Python's own warning registries, the record is forgotten when the warning filters are
    replaced (``warnings.catch_warnings``, ``pytest.warns``), so each such block sees it again.
    """
    if _norm_warned_under and _norm_warned_under[0] is warnings.filters:
        return
    _norm_warned_under[:] = [warnings.filters]
    warnings.warn(message, NotNormalizedWarning, stacklevel=4)


def check_positive_int(value, name: str, *, upper: int | None = None, upper_name: str = "") -> int:
    """Return ``value`` as an int >= 1 (and <= ``upper`` if given), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name}={value} is larger than {upper_name} ({upper}); "
                         f"use {name} <= {upper}")
    return int(value)


def check_grid(values, name: str, check) -> list:
    """A hyperparameter grid as a list, each value passed through ``check(value, name)``;
    ``ValueError`` when it is empty or repeats a value."""
    out = [check(v, f"every value in {name}") for v in np.atleast_1d(values).tolist()]
    if not out:
        raise ValueError(f"{name} is empty; pass at least one value")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has repeated values {sorted(out)}; list each value once")
    return out


def check_non_negative(value, name: str) -> float:
    """Return ``value`` as a finite float >= 0, else raise ``ValueError``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ``ValueError`` naming it when it is not one."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or "
                         "'auto'") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; unknown CUDA -> clear error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; "
                         "use device='cpu' or 'auto'")
    return dev


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without the copy, also for read-only arrays (cached memmaps).

    PyTorch warns that writing to a tensor over a read-only array is undefined; every caller
    here only reads (or moves the tensor to another device/dtype), so the warning is silenced
    instead of copying a possibly multi-GB bank.
    """
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)
