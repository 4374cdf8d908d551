"""Exact top-k reference similarities with torch: a blocked GEMM and a cheap row-wise selection.

``exact_topk(x, refs, k)`` returns, for every row of ``x``, its k largest inner products with the
rows of ``refs``, sorted descending, as float32. Gallery rows are processed in blocks whose
(rows x ref_chunk) similarity buffer stays within ``memory_budget_mb``; each block is one GEMM
into a reused buffer (no per-block allocation), followed by a selection (``block_topk``) that
avoids a full ``torch.topk`` over every row. With ``ref_batch_size`` the references are streamed
in chunks and a running top-k is merged, so neither n_x x n_refs nor a full block over all
references is held.

Routes (``ROUTES``): the GEMM in torch float32 (``Float32Blocks``), in NumPy's BLAS, or in
bfloat16 / float16 as an exact pre-selection re-scored in float32 (``LowPrecisionBlocks``, with
its error bound); ``choose_route`` / ``probe_routes`` pick the fastest on this machine.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from nnn._threads import one_thread_workers
from nnn.methods._selection import kth_largest, sorted_descending, topk_indices, topk_values

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: low-precision pre-selection routes: dtype, unit roundoff u, absolute error eta of a result
#: that underflows (flushed to zero: the smallest normal number)
LOW_PRECISION = {"bfloat16": (torch.bfloat16, 2.0**-8, 2.0**-126),
                 "float16": (torch.float16, 2.0**-11, 2.0**-14)}
#: how the exact top-k is computed (``exact_topk``); "auto": ``choose_route``
ROUTES = ("auto", "float32", "float32_numpy", *LOW_PRECISION)

#: columns per group in ``block_topk``'s pre-selection (measured on a 2-core AVX-512 CPU: 16 is
#: the fastest of 8..128 for 118k columns and k = 128)
_GROUP = 16
#: at most this many scores per block of the low-precision routes (256 MiB in bfloat16:
#: 1,134 rows of 118k references ran 7% faster than the 2,268 a 512 MiB budget allows; chunking
#: the references, with the running top-k as a floor, was no faster at 32k-64k per chunk)
_LOW_BLOCK_VALUES = 2**27
#: groups per union in ``LowPrecisionBlocks``'s lower bound g_K, and the fewest unions per k
#: (8: with NumPy's selection, one block's selection at k = 512 took 154 ms instead of 172 ms
#: with 4, at 118k references on 2 Zen 5 cores; the same at k = 16 and 128, and at 591k)
_SUPER, _UNIONS_PER_K = 8, 8
#: x-rows x references below this finish in about a second: no progress bar for them.
_PROGRESS_MIN_SCORES = 10**9
#: below this many multiply-adds (n_x * n_refs * d; ~1 s of float32 GEMM on 2 cores) "auto" takes
#: torch float32 without a probe (the probe takes ~1 s, once per process and probe k). Measured on a
#: 2-core Zen 5, 5,000 x n_refs x 512, k = 128, three fits in a fresh process: at 30k references
#: (7.7e10) probe + bfloat16 1.42, 0.91, 0.81 s vs float32 2.62, 1.65, 1.61 s; at 20k (5.1e10)
#: 1.67, 0.46, 0.50 s vs 1.25, 1.69, 1.31 s: the probe pays from the second fit on
_PROBE_MIN_WORK = 5e10
#: a low-precision GEMM whose warm-up is this many times slower than float32 is not timed further
_LOW_SPEEDUP = 3.0
#: NumPy must beat torch's float32 GEMM, a low precision the float32 route, by this factor
_ROUTE_MARGIN = 1.1
#: the probe's stage-2 block: x rows and references. 1,024 rows, about as many as a real
#: low-precision block holds at 118k references (1,134), so that the re-scoring's pass over the
#: references is shared by as many rows; the caller's k is scaled to the same fraction of the
#: references (``probe``). Measured on a 2-core Zen 5, where a real 5,000 x 118,350 fit at k = 128
#: ran 2.6x faster in bfloat16 than in NumPy float32: the earlier 256 x 16,384 block at the
#: caller's k judged it 1.07-1.12x (and picked NumPy in 2 of 3 processes), this one 2.2x; the two
#: routes take ~0.04 and ~0.09 s on it
_PROBE_ROWS, _PROBE_REFS = 2**10, 2**14
#: values per float32 temporary when rounding errors are measured (4 MiB, reused: fresh block-sized
#: temporaries page-faulted, and the pass over 118k references took 224 ms instead of 63 ms on a
#: 2-core AMD Zen 5; 1 and 16 MiB were slower)
_NORM_VALUES = 2**20
#: the same on CUDA (256 MiB): few blocks, since each costs a handful of kernel launches (blocks of
#: 2**20 values would take ~1,700 launches for 591,753 x 512 references, ~20 ms at ~10 us each)
_NORM_VALUES_CUDA = 2**26


def block_topk(sims: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values of each row of ``sims`` (b, c) -> (b, k), in no particular order.

    ``torch.topk`` over long rows costs about as much as a quarter of the GEMM that made them on a
    CPU, so long rows are pre-selected (hand-written; torch has no cheaper exact row-wise top-k):
    the first ``g*m`` columns are split into m strided groups {j, j+m, ..., j+(g-1)m}. Let t be
    the row's k-th largest value: fewer than k groups have a maximum above t and all are among
    the k groups with the largest maxima; those k groups hold at least k values >= t. So the top-k
    of their k*g columns plus the < g leftover columns equals the row's top-k, ties included.
    ``sims`` may be a strided view.
    """
    b, c = sims.shape
    m = c // _GROUP
    if m < 4 * k:  # short rows: the plain selection is as fast
        return topk_values(sims, k)
    main = sims[:, :_GROUP * m].view(b, _GROUP, m)
    group_max = main.amax(dim=1)                                            # (b, m)
    groups = topk_indices(group_max, k)                                     # (b, k)
    offsets = torch.arange(_GROUP, device=sims.device) * m                  # (g,)
    cols = (groups[:, None, :] + offsets[None, :, None]).reshape(b, _GROUP * k)
    candidates = sims.gather(1, cols)                                       # (b, g*k)
    if c > _GROUP * m:
        candidates = torch.cat([candidates, sims[:, _GROUP * m:]], dim=1)
    return topk_values(candidates, k)


def exact_topk(x: torch.Tensor, refs: torch.Tensor, k: int, *, memory_budget_mb: float,
               ref_batch_size: int | None = None, progress: bool = True,
               route: str = "float32") -> torch.Tensor:
    """Sorted top-k similarities (n_x, k) float32 of ``x`` (n_x, d) against ``refs`` (n_r, d).

    Both tensors share a device and dtype. ``route`` (see ``ROUTES``; "auto" is resolved by the
    caller with ``choose_route``): "float32" runs the GEMM in the tensors' dtype (values returned
    as float32); "float32_numpy" in NumPy's BLAS (CPU, float32); "bfloat16" / "float16" pre-select
    in that precision and re-score in float32 (``LowPrecisionBlocks``; float32 tensors). Every
    route but a half-precision ``dtype`` gives the float32 result. ``k <= n_r`` is the caller's
    check.
    """
    n_x, n_r = len(x), len(refs)
    chunk = n_r if ref_batch_size is None else min(ref_batch_size, n_r)
    blocks = _blocks(x, refs, route, chunk, memory_budget_mb)
    out = torch.empty(n_x, k, dtype=torch.float32, device=x.device)
    starts = range(0, n_x, blocks.rows)
    bar = tqdm(starts, desc="top-k reference similarities", unit="block", leave=False,
               disable=not progress or n_x * n_r < _PROGRESS_MIN_SCORES)
    with torch.inference_mode():
        for start in bar:
            stop = min(n_x, start + blocks.rows)
            best = None                                                     # running (b, <=k)
            for r0 in range(0, n_r, chunk):
                r1 = min(n_r, r0 + chunk)
                top = blocks.topk(start, stop, r0, r1, min(k, r1 - r0), best)
                if best is not None:
                    merged = torch.cat([best, top], dim=1)
                    top = topk_values(merged, min(k, merged.shape[1]))
                best = top
            out[start:stop] = sorted_descending(best.float())
    return out


def _blocks(x: torch.Tensor, refs: torch.Tensor, route: str, chunk: int,
            memory_budget_mb: float):
    """The block computer of ``route``: ``LowPrecisionBlocks`` or ``Float32Blocks``."""
    return (LowPrecisionBlocks if route in LOW_PRECISION else Float32Blocks)(
        x, refs, route, chunk, memory_budget_mb)


class Float32Blocks:
    """Top-k of (x block) x (reference chunk) products: one GEMM into a reused buffer (torch's
    threads), then ``block_topk`` split by rows over one-thread workers (``_by_rows``).
    ``route`` "float32": torch (in the tensors' dtype); "float32_numpy": NumPy's BLAS (OpenBLAS
    in NumPy's wheels), which beats torch's float32 GEMM on some CPUs (measured 93 vs 60 GFLOP/s
    on a 2-core AMD EPYC Zen 2)."""

    def __init__(self, x: torch.Tensor, refs: torch.Tensor, route: str, chunk: int,
                 memory_budget_mb: float):
        self.x, self.refs, self.numpy = x, refs, route == "float32_numpy"
        self.rows = _rows(len(x), chunk, x.element_size(), memory_budget_mb)
        self.buf = torch.empty(self.rows, chunk, dtype=x.dtype, device=x.device)
        if self.numpy:
            self.x_np, self.refs_np, self.buf_np = x.numpy(), refs.numpy(), self.buf.numpy()

    def topk(self, start: int, stop: int, r0: int, r1: int, k: int,
             best: torch.Tensor | None = None) -> torch.Tensor:
        """The k largest values (b, k), unordered, of each row of x[start:stop] @ refs[r0:r1].T
        (``best``, the running top-k of earlier chunks, is not needed here)."""
        b, c = stop - start, r1 - r0
        if self.numpy:
            np.matmul(self.x_np[start:stop], self.refs_np[r0:r1].T, out=self.buf_np[:b, :c])
            sims = self.buf[:b, :c]
        else:
            sims = torch.mm(self.x[start:stop], self.refs[r0:r1].T, out=self.buf[:b, :c])
        return _by_rows(lambda i, j: block_topk(sims[i:j], k), b, sims.device)


class LowPrecisionBlocks:
    """Exact float32 top-k through a low-precision pre-selection (``route`` "bfloat16"/"float16").

    Per block: S^ = x~ r~^T, one GEMM in the low precision (x~, r~: x and the references rounded
    to it) into a reused buffer; g_K = the k-th largest maximum of the strided column groups of
    ``block_topk``, or on long rows of unions of up to ``_SUPER`` such groups, as many as leave
    8 k unions (k distinct groups hold a value >= g_K, so k values of S^ are >= g_K; the top-k
    values of a row rarely share a union, so g_K stays close to the row's k-th largest S^, and
    the selection runs over up to 1/8 as many maxima). Every reference whose S^ could still
    belong to the float32 top-k (S^ >= theta, below) is re-scored in float32 (one fused sampled
    GEMM, ``_sampled_products``) and the exact top-k is taken among them.

    The bound. For a row x and reference r, let S = x.r (exact), A = x~.r~ (exact), P = the
    GEMM's float32-accumulated A, S^ = P rounded to the low precision, S32 = the float32
    re-score of x.r. Then, for any summation order (Higham, Accuracy and Stability, 3.1),
      |A - S| <= |x| |r - r~| + |x - x~| |r~|                   (exact identity + Cauchy-Schwarz)
      |P - A| <= gamma'_d |x~| |r~| + d 2^-126,  gamma'_d: gamma_d with the accumulation's
                                                 unit roundoff (2^-24 on the CPU; CUDA below)
      |S32 - S| <= gamma_d |x| |r|,              gamma_d = d 2^-24 / (1 - d 2^-24)
      |S^ - P| <= u |P| + eta                   (u = 2^-8 bfloat16, 2^-11 float16, twice that
                                                 on CUDA; eta: flushed or subnormal results,
                                                 2^-126 / 2^-14)
    so S32 lies in [lo(S^) - e, hi(S^) + e] with e = the sum of the first three bounds
    (maxima over the references) and lo, hi increasing (``_theta``). The k entries with
    S^ >= g_K give t32 (the row's k-th largest S32) >= lo(g_K) - e, and every member of the
    float32 top-k (ties included) has hi(S^) + e >= t32, i.e. S^ >= theta = hi^-1(lo(g_K) - 2e).
    |x - x~| and |r - r~| are the measured rounding errors of each row (also against x~ with
    its subnormals flushed, for kernels that flush them), see ``_rounded``; their worst case
    u |x| is about twice as large and widened the band enough to cost the k = 512 table 7%.
    The band is ~0.01 wide for unit vectors in bfloat16 (~300 candidates per row at k = 128 of
    118k references).
    The bound needs a GEMM that accumulates in float32 (AMX and AVX512-BF16 kernels do);
    ``probe_routes`` checks it and never picks a route that breaks it. On CUDA (``_rounding``)
    the low-precision GEMM's float32 accumulation is bounded with 2^-21 in place of 2^-24 and
    the result's rounding with 2u: NVIDIA's tensor cores align the addends of each block of
    products by truncation and round toward zero (Fasi, Higham, Mikaitis and Pranesh, Numerical
    behavior of NVIDIA tensor cores, PeerJ CS 2021: V100, T4, A100), which costs at most about
    (1 + 2 / n_b) 2^-23 per product for blocks of n_b >= 4 products, under 3 * 2^-24; 2^-21
    leaves more than twice that for GPUs that paper did not measure, and
    ``benchmarks/gpu_check.py`` measures the largest error on the GPU it runs on. cuBLAS's
    reduced-precision reductions, TF32 and the like are switched off while a block runs
    (``_ieee_gemms``), whatever the process has set.

    With references in chunks (``ref_batch_size``), the running top-k of the earlier chunks
    is a floor: t32 >= its k-th value, so theta = hi^-1(max(lo(g_K) - e, floor) - e) and a
    later chunk re-scores only what can still enter the top-k.

    Memory beyond the float32 route's: low-precision copies of x and of the references (half
    their float32 size: 606 MB for 591,753 x 512); the similarity buffer holds at most
    ``memory_budget_mb``, and on the CPU at most ``_LOW_BLOCK_VALUES`` scores (a measurement of
    CPU caches: a GPU gets the blocks its budget allows, fewer and larger).

    A row whose candidates exceed ``max(8 k, c / 16)`` (near-constant rows, duplicates: the band
    holds too many references) is computed in float32 instead, so the cost stays bounded.
    Chunks too short for the group pre-selection (c < 4 k * 16) are computed in float32.
    """

    def __init__(self, x: torch.Tensor, refs: torch.Tensor, route: str, chunk: int,
                 memory_budget_mb: float):
        self.low, u, self.eta = LOW_PRECISION[route]
        u_acc, out_factor = _rounding(x.device)
        self.u = u * out_factor
        self.x, self.refs, self.d = x, refs, x.shape[1]
        self.x_low, x_norm, x_err, x_low_norm = _rounded(x, self.low)
        self.refs_low, *r_bounds = _rounded(refs, self.low)
        r_norm, r_err, r_low_norm = (b.amax() for b in r_bounds)
        gamma_acc, gamma = (self.d * v / (1 - self.d * v) for v in (u_acc, 2.0**-24))
        #: e per row of x (float64), the sum of the first three bounds of the class docstring
        self.e = (x_norm * r_err + x_err * r_low_norm + gamma_acc * x_low_norm * r_low_norm
                  + gamma * x_norm * r_norm + self.d * 2.0**-126)
        self.rows = _rows(len(x), chunk, self.x_low.element_size(), memory_budget_mb)
        if x.device.type == "cpu":
            self.rows = min(self.rows, max(1, _LOW_BLOCK_VALUES // chunk))
        self.buf = torch.empty(self.rows, chunk, dtype=self.low, device=x.device)

    def topk(self, start: int, stop: int, r0: int, r1: int, k: int,
             best: torch.Tensor | None = None) -> torch.Tensor:
        """The k largest float32 values (b, k), unordered, of each row of x[start:stop] @
        refs[r0:r1].T, or -inf for values below the k-th of ``best`` (b, k), the running
        top-k of the earlier chunks (they cannot enter the row's top-k).

        The GEMM uses torch's threads; the selection and re-scoring after it are split by rows
        over one-thread workers (``_by_rows``).
        """
        b, c = stop - start, r1 - r0
        with _ieee_gemms():
            if c // _GROUP < 4 * k:
                return block_topk(self.x[start:stop] @ self.refs[r0:r1].T, k)
            s = torch.mm(self.x_low[start:stop], self.refs_low[r0:r1].T, out=self.buf[:b, :c])
            floor = (best.amin(dim=1).double() if best is not None and best.shape[1] == k
                     else torch.full((b,), -torch.inf, dtype=torch.float64, device=s.device))
            return _by_rows(lambda i, j: self._select(s[i:j], start + i, r0, r1, k, floor[i:j]),
                            b, s.device)

    def _select(self, s: torch.Tensor, start: int, r0: int, r1: int, k: int,
                floor: torch.Tensor) -> torch.Tensor:
        """The exact top-k (b, k) of rows start.. of x against refs[r0:r1] from their
        low-precision scores ``s`` (b, c), -inf below ``floor`` (b,) (a known lower bound on
        each row's k-th largest float32 value over all references; class docstring)."""
        b, c = s.shape
        xb, rb = self.x[start:start + b], self.refs[r0:r1]
        m = c // _GROUP
        main = s[:, :_GROUP * m].view(b, _GROUP, m)                            # strided groups
        group_max = main.amax(dim=1)                                           # (b, m)
        union = min(_SUPER, m // (_UNIONS_PER_K * k))   # maxima of unions of groups
        if union > 1:
            m2 = m // union
            group_max_2 = group_max[:, :union * m2].view(b, union, m2).amax(dim=1)
        g_k = kth_largest(group_max_2 if union > 1 else group_max, k)
        theta = self._theta(g_k.double(), self.e[start:start + b], floor)      # (b,) low
        rows, groups = (group_max >= theta[:, None]).nonzero(as_tuple=True)    # row-major
        pair, member = (main[rows, :, groups] >= theta[rows][:, None]).nonzero(as_tuple=True)
        cand_rows, cand_cols = rows[pair], groups[pair] + member * m           # row-major
        counts = torch.bincount(cand_rows, minlength=b)
        too_many = counts > max(8 * k, c // _GROUP)
        if too_many.any():
            ok = ~too_many[cand_rows]
            cand_rows, cand_cols, counts = cand_rows[ok], cand_cols[ok], counts * ~too_many
        exact = _sampled_products(xb, rb, cand_rows, cand_cols)                # (nnz,)
        width = max(int(counts.max()), k)      # rows that pass hold >= k candidates
        padded = torch.full((b, width), -torch.inf, device=xb.device)
        first = torch.cumsum(counts, 0) - counts
        padded[cand_rows, torch.arange(len(cand_rows), device=xb.device) - first[cand_rows]] = exact
        if c > _GROUP * m:
            padded = torch.cat([padded, xb @ rb[_GROUP * m:].T], dim=1)
        top = topk_values(padded, min(k, padded.shape[1]))
        if too_many.any():
            idx = torch.nonzero(too_many).squeeze(1)
            top[idx] = block_topk(xb[idx] @ rb.T, k)
        return top

    def _theta(self, g_k: torch.Tensor, e: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        """theta = hi^-1(max(lo(g_K) - e, floor) - e) (class docstring), float64 (b,), as the
        largest value of the low precision that is <= it (so that S^ is compared in its own
        dtype)."""
        u, eta = self.u, self.eta
        lo = torch.minimum((g_k - eta) / (1 + u), (g_k - eta) / (1 - u))
        y = torch.maximum(lo - e, floor) - e
        theta = torch.where(y >= 0, y * (1 - u), y * (1 + u)) - eta
        low = theta.to(self.low)
        return torch.where(low.double() > theta,
                           torch.nextafter(low, torch.full_like(low, -torch.inf)), low)


def _rounding(device: torch.device) -> tuple[float, float]:
    """(the unit roundoff that bounds a low-precision GEMM's float32 accumulation, the factor on
    u for the rounding of its result) on ``device``: (2^-24, 1) on the CPU, whose bfloat16 and
    float16 kernels (AMX, AVX512-BF16, oneDNN) round to nearest; (2^-21, 2) on CUDA, whose
    tensor cores truncate (``LowPrecisionBlocks``)."""
    return (2.0**-24, 1.0) if device.type == "cpu" else (2.0**-21, 2.0)


@contextlib.contextmanager
def _ieee_gemms():
    """While the block runs: float32 matmuls in IEEE float32 (no TF32 or bfloat16 inner
    products, whatever the process set with ``torch.backends.*.matmul.fp32_precision`` or
    ``torch.set_float32_matmul_precision``) and cuBLAS's half-precision GEMMs without
    reduced-precision reductions, which torch allows by default and the bound of
    ``LowPrecisionBlocks`` forbids. The process's settings are restored after it (through the
    same API: torch refuses to report a setting made through a mix of its two APIs)."""
    cuda = torch.backends.cuda.matmul
    if hasattr(torch.backends, "fp32_precision"):                  # torch >= 2.9
        backends = (cuda, torch.backends.mkldnn.matmul)
        precision = [b.fp32_precision for b in backends]
        for b in backends:
            b.fp32_precision = "ieee"
    else:
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
    reductions = (cuda.allow_fp16_reduced_precision_reduction,
                  cuda.allow_bf16_reduced_precision_reduction)
    cuda.allow_fp16_reduced_precision_reduction = False
    cuda.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        if isinstance(precision, list):
            for b, value in zip(backends, precision):
                b.fp32_precision = value
        else:
            torch.set_float32_matmul_precision(precision)
        cuda.allow_fp16_reduced_precision_reduction = reductions[0]
        cuda.allow_bf16_reduced_precision_reduction = reductions[1]


def _by_rows(select, b: int, device: torch.device) -> torch.Tensor:
    """``select(i, j)`` (the result for rows i..j of a block of ``b`` rows) for consecutive row
    ranges, concatenated: on the CPU one range per torch thread, each on a one-thread worker
    (``nnn._threads``; a selection is many small or memory-bound operations, and NumPy's runs
    on one thread: a 1,134 x 118,350 float32 ``block_topk`` took 0.13 s on the caller's two
    threads and 0.07 s on two workers, 2-core Zen 4), on CUDA one call."""
    workers = min(b, torch.get_num_threads()) if device.type == "cpu" else 1
    cuts = [b * w // workers for w in range(workers + 1)]
    return torch.cat(one_thread_workers(lambda w: select(cuts[w], cuts[w + 1]), workers))


def _rows(n_x: int, chunk: int, element_size: int, memory_budget_mb: float) -> int:
    """x rows per block so that a (rows x chunk) buffer fits ``memory_budget_mb``."""
    return max(1, min(n_x, int(memory_budget_mb * 2**20 // (chunk * element_size))))


def _rounded(a: torch.Tensor, low: torch.dtype):
    """``a`` (n, d) float32 in ``low``, with float64 upper bounds (n,) on each row's |a|, on its
    rounding error |a - a~| and on |a~|.

    a - a~ is exact in float32 (a~ holds a's leading bits); to its norm is added what flushing
    a~'s float16 subnormals to zero would add (bfloat16's, below 1.2e-38, are covered by
    sqrt(d) 2^-126). float32 norms of length d are within a factor 1 + d 2^-23 of the exact
    ones, so they are taken in float32 (in row blocks, no float64 copy) and rounded up.
    """
    n, d = a.shape
    a_low = torch.empty(n, d, dtype=low, device=a.device)
    norm = torch.empty(n, dtype=torch.float32, device=a.device)
    err = torch.empty_like(norm)
    rows = max(1, (_NORM_VALUES if a.device.type == "cpu" else _NORM_VALUES_CUDA) // d)
    back = torch.empty(min(n, rows), d, device=a.device)     # a~ in float32, then a~ - a
    for i in range(0, n, rows):
        block, block_low, b = a[i:i + rows], a_low[i:i + rows], back[:min(rows, n - i)]
        block_low.copy_(block)
        b.copy_(block_low)
        norm[i:i + rows] = torch.linalg.vector_norm(block, dim=1)
        flushed = 0
        if low == torch.float16:                            # the norm of a~'s subnormals
            flushed = torch.linalg.vector_norm(b.masked_fill_(b.abs() >= torch.finfo(low).tiny,
                                                              0), dim=1)
            b.copy_(block_low)
        err[i:i + rows] = torch.linalg.vector_norm(b.sub_(block), dim=1) + flushed
    up = 1 + (d + 2) * 2.0**-23
    norm, err = norm.double() * up, err.double() * up + d**0.5 * 2.0**-126
    return a_low, norm, err, norm + err


def _sampled_products(x: torch.Tensor, refs: torch.Tensor, rows: torch.Tensor,
                      cols: torch.Tensor) -> torch.Tensor:
    """float32 x[i] . refs[j] (nnz,) for the pairs (rows[i], cols[j]), in their order.

    torch's sampled dense-dense product (``torch.sparse.sampled_addmm``: each pair reads its two
    rows once, fused) is 2.5x faster here than gathering the reference rows and multiplying.
    The pairs are taken reference by reference (a CSR matrix over references x rows of x), so
    that the references are read in order: 1.7x faster than row by row on one thread. The order
    is a stable sort, which torch runs as a radix sort for integers on the CPU: 8 ms on one
    thread for the 523k pairs of a 567-row block at k = 512 (118k references), against 35 ms
    for NumPy's argsort (2-core Zen 4).
    """
    if len(cols) == 0:
        return torch.empty(0, device=x.device)
    order = torch.sort(cols, stable=True).indices
    by_ref = cols[order]
    lo, hi = int(by_ref[0]), int(by_ref[-1]) + 1
    crow = torch.zeros(hi - lo + 1, dtype=torch.long, device=x.device)
    crow[1:] = torch.cumsum(torch.bincount(by_ref - lo, minlength=hi - lo), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        mask = torch.sparse_csr_tensor(crow, rows[order], torch.zeros(len(cols), device=x.device),
                                       size=(hi - lo, len(x)), check_invariants=False)
    out = torch.empty(len(cols), device=x.device)
    out[order] = torch.sparse.sampled_addmm(mask, refs[lo:hi], x.T).values()
    return out


def choose_route(precision: str, device: torch.device, n_x: int, n_refs: int, dim: int,
                 k: int) -> str:
    """The route (``ROUTES`` less "auto") for ``precision`` on ``device``, for the top-``k`` of
    ``n_x`` rows against ``n_refs`` references in dimension ``dim``.

    An explicit route is returned as is (the caller checks that "float32_numpy" runs on the
    CPU). "auto" is "float32" below ``_PROBE_MIN_WORK`` multiply-adds (a second or less: nothing
    to win, and no probe at start-up) and on CUDA (the low-precision routes have not been
    measured on a GPU yet: ask for one explicitly); otherwise the fastest route of ``probe``.
    """
    if precision != "auto":
        return precision
    if device.type != "cpu" or float(n_x) * n_refs * dim < _PROBE_MIN_WORK:
        return "float32"
    return probe(dim, k, n_refs)["route"]


def probe(dim: int, k: int, n_refs: int) -> dict:
    """``probe_routes`` for this process's thread count, at the k that is the same fraction of
    the probe's ``_PROBE_REFS`` references as ``k`` is of ``n_refs`` (what a selection costs per
    score depends on that fraction), rounded up to a power of two so that nearby problems share
    one probe."""
    scaled = max(1.0, k * _PROBE_REFS / n_refs)
    return probe_routes(dim, torch.get_num_threads(), 1 << math.ceil(math.log2(scaled)))


@functools.cache
def probe_routes(dim: int, threads: int, k: int) -> dict:
    """Time the routes on this CPU (once per process, dimension, thread count and k).

    Seeded unit rows, two stages. (1) Each GEMM alone, a (256 x dim) @ (dim x 8192) product,
    best of 3 after a warm-up, in torch float32, NumPy float32 and torch bfloat16 / float16. A
    low precision is dropped when it breaks the error bound of ``LowPrecisionBlocks`` (its GEMM
    must accumulate in float32; checked against float64) or its GEMM is slower than the faster
    float32 one (a warm-up ``_LOW_SPEEDUP`` times slower ends its timing: the probe stays short
    on CPUs without bf16 units). NumPy is the float32 route when its GEMM is ``_ROUTE_MARGIN``
    times faster than torch's (the selection after it is the same). (2) That float32 route and
    each remaining low precision on one block of ``_PROBE_ROWS`` x ``_PROBE_REFS`` scores,
    ``topk`` at this k, best of 2 after a warm-up (the one-off rounding of the inputs, O(n d), is
    left out; with no low precision left, or k too large a fraction of the references for the
    pre-selection, which then computes in float32, nothing is timed). Stage 2 decides: what a
    pre-selection costs besides its GEMM (memory-bound passes over the scores, the re-scoring)
    differs between CPUs more than the GEMMs do (measured: half the float32 GEMM's time on an
    Intel AMX VM, under a fifth on an AMD Zen 5; benchmarks/RESULTS.md), so GEMM times alone
    pick wrongly. A low precision is chosen when it is ``_ROUTE_MARGIN`` times faster than
    float32 there.
    Returns {"route": the chosen route, "seconds": {route: stage-2 best}, "gemm_seconds":
    {route: stage-1 best}, "rejected": {route: why}}.
    """
    gen = torch.Generator().manual_seed(0)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    x, refs = unit(256), unit(8192)
    buf = torch.empty(len(x), len(refs))
    x_np, refs_np, buf_np = x.numpy(), refs.numpy(), buf.numpy()
    gemms = {"float32": lambda: torch.mm(x, refs.T, out=buf),
             "float32_numpy": lambda: np.matmul(x_np, refs_np.T, out=buf_np)}
    gemm_seconds, rejected = {name: _best_time(fn) for name, fn in gemms.items()}, {}
    fastest32 = min(gemm_seconds.values())
    for name, (low, u, eta) in LOW_PRECISION.items():
        if _PROBE_REFS // _GROUP < 4 * k:
            rejected[name] = "k is too large a fraction of the references to pre-select"
            continue
        x_low, refs_low = x.to(low), refs.to(low)
        out = torch.empty(len(x), len(refs), dtype=low)
        fn = functools.partial(torch.mm, x_low, refs_low.T, out=out)
        if _best_time(fn, repeats=0) > fastest32 * _LOW_SPEEDUP:
            rejected[name] = "its GEMM is slower than float32"
            continue
        rows = slice(0, 32)                            # enough to catch a wrong accumulation
        exact = x_low[rows].double() @ refs_low.double().T
        u_acc = _rounding(x.device)[0]
        gamma = dim * u_acc / (1 - dim * u_acc)
        norms = x_low[rows].double().norm(dim=1)[:, None] * refs_low.double().norm(dim=1)[None]
        if ((out[rows].double() - exact).abs() > u * exact.abs()
                + (1 + u) * gamma * norms * 1.01 + eta).any():
            rejected[name] = "its GEMM does not accumulate in float32"
        elif (t := _best_time(fn)) > fastest32:
            rejected[name] = "its GEMM is slower than float32"
        else:
            gemm_seconds[name] = t
    route32 = "float32_numpy" if gemm_seconds["float32"] > _ROUTE_MARGIN * fastest32 \
        else "float32"
    lows = [name for name in gemm_seconds if name in LOW_PRECISION]
    seconds, route = {}, route32
    if lows:
        x, refs = unit(_PROBE_ROWS), unit(_PROBE_REFS)
        for name in (route32, *lows):
            blocks = _blocks(x, refs, name, len(refs), len(x) * len(refs) * 4 / 2**20)
            seconds[name] = _best_time(
                functools.partial(blocks.topk, 0, len(x), 0, len(refs), k), repeats=2)
        route = min(seconds, key=seconds.get)
        if seconds[route] * _ROUTE_MARGIN > seconds[route32]:
            route = route32
    logger.info("exact top-k route on this CPU (%d threads, d=%d, probe k=%d): %s; probe "
                "seconds %s%s", threads, dim, k, route,
                {n: round(t, 5) for n, t in seconds.items()},
                f", not used: {rejected}" if rejected else "")
    return {"route": route, "seconds": seconds, "gemm_seconds": gemm_seconds,
            "rejected": rejected}


def _best_time(fn, repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls of ``fn`` after one warm-up call, in seconds (with
    ``repeats=0``: the warm-up call's time)."""
    t0 = time.perf_counter()
    fn()
    best = math.inf if repeats else time.perf_counter() - t0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
