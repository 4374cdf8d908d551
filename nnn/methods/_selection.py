"""Row-wise top-k selection: NumPy's partition on the CPU where k is not a tiny part of a row,
``torch.topk`` elsewhere.

NumPy (2.x) partitions and sorts float rows with SIMD kernels (x86-simd-sort: AVX-512 or AVX2);
``torch.topk`` does not. Measured on a 2-core AMD Zen 5, 1,134 float32 rows, one thread each,
NumPy's time over torch's: values (``np.partition``) 0.10-0.29 for rows of 4 k to 64 k values,
0.44-0.49 at 256 k, 0.87-0.89 at 1024 k; indices (``np.argpartition``) 0.22-0.62 up to 64 k,
0.73-1.16 at 256 k, 1.5 at 1024 k (k = 16, 128, 512). torch's two threads halve its times, NumPy
runs on one, so NumPy selects only rows of at most ``_NUMPY_MAX_WIDTH`` k values (there it took
at most 0.76 of torch's two-thread time). With NumPy held to AVX2 (``NPY_DISABLE_CPU_FEATURES=
"X86_V4 AVX512_ICL"``) the times were the same; with neither (SSE4 only) NumPy was 0-20 % slower
than torch. NumPy's kernels release the GIL, so one-thread workers (``nnn._threads``) run them
in parallel. Values come back as those of the input (bfloat16 and float16 rows are selected in
float32, which holds them exactly); ties may come in any order.

Every function takes a 2-D tensor (b, c) (a strided view is fine), works along dim 1, needs
1 <= k <= c and returns tensors on the input's device.
"""

from __future__ import annotations

import numpy as np
import torch

#: dtypes that NumPy selects in (the half-precision ones converted to float32 first)
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: NumPy selects the top k of rows of at most this many times k values (module docstring)
_NUMPY_MAX_WIDTH = 64


def _as_numpy(x: torch.Tensor, k: int) -> np.ndarray | None:
    """``x`` as a NumPy array (no copy for float32/float64), or None where torch selects."""
    if (x.device.type != "cpu" or x.dtype not in _NUMPY_DTYPES
            or x.shape[1] > _NUMPY_MAX_WIDTH * k):
        return None
    return (x if x.dtype in (torch.float32, torch.float64) else x.float()).numpy()


def _top_part(a: np.ndarray, k: int) -> np.ndarray:
    """A view (b, k) of ``a`` partitioned so that its last k columns hold each row's k largest
    values, the smallest of them first."""
    c = a.shape[1]
    return np.partition(a, c - k, axis=1)[:, c - k:]


def topk_values(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values of each row (b, k), in no particular order, in ``x``'s dtype."""
    a = _as_numpy(x, k)
    if a is None:
        return torch.topk(x, k, dim=1, sorted=False).values
    return torch.from_numpy(np.ascontiguousarray(_top_part(a, k))).to(x.dtype)


def kth_largest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of each row (b,), in ``x``'s dtype."""
    a = _as_numpy(x, k)
    if a is None:
        return torch.topk(x, k, dim=1, sorted=False).values.amin(dim=1)
    return torch.from_numpy(_top_part(a, k)[:, 0].copy()).to(x.dtype)


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices (b, k) int64 of the k largest values of each row, in no particular order."""
    a = _as_numpy(x, k)
    if a is None:
        return torch.topk(x, k, dim=1, sorted=False).indices
    c = a.shape[1]
    return torch.from_numpy(np.ascontiguousarray(np.argpartition(a, c - k, axis=1)[:, c - k:]))


def sorted_descending(x: torch.Tensor) -> torch.Tensor:
    """Each row sorted from largest to smallest (b, c), in ``x``'s dtype."""
    a = _as_numpy(x, x.shape[1])
    if a is None:
        return torch.sort(x, dim=1, descending=True).values
    return torch.from_numpy(np.sort(a, axis=1)[:, ::-1].copy()).to(x.dtype)
