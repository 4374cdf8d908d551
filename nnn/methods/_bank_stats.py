"""Streaming statistics of a bank against the gallery, shared by QB-Norm and DBNorm.

For a bank B (n_b, d), a gallery G (n_g, d) and each of several betas > 0, the inverted softmax
needs, per gallery item r,

    log_norm_beta(r) = log sum_{b in B} exp(beta * s(b, r)),      s = dot product,

and the dynamic variants need the *activation set*: gallery items that are among the
``activation_k`` most similar gallery items of at least one bank row (an item tied with a row's
k-th most similar one counts too: the set is {r : s(b, r) >= kth_b for some b}, kth_b the k-th
largest s(b, .)). The activation set does not depend on beta, and each log_norm depends only on
(bank, beta).

All of them come from ONE pass over bank chunks of ``chunk_rows(n_g, d, memory_budget_mb)``
rows (on the CPU at most ``_CPU_CHUNK_SCORES`` similarities, so that a chunk stays in cache
between its passes), however many betas are asked for (a grid search over beta costs one pass
per bank). Each chunk's (c, n_g) block of s is computed once into a reusable buffer; its
activation comes from max_b (s(b, r) - kth_b) >= 0 (for float32 x and y, x - y >= 0 exactly when
x >= y), its column maxima m are subtracted in place; then for every beta the block
e = beta * (s - m) (all <= 0) is written into a second reusable buffer, summed down the bank axis
in float32, and merged into a float64 running value with ``logaddexp``. On the CPU the chunks are
dealt to ``torch.get_num_threads()`` workers, each on one thread (``bank_stats``), merged in a
fixed order. The result is stable for any beta (100 and beyond), the bank x gallery matrix
(11.8 GB at COCO scale, 591,753 x 5,000) is never built, and each beta's value does not depend
on which other betas share the pass (a grid search gives bit for bit what a one-beta fit gives:
every operation on a beta's values is the same whatever the other betas are).

Cost: one matrix product per chunk and, per chunk, about three passes for the statistics shared
by all betas (row maxima, the activation pass, column maxima; a fourth, the column minima, only
when some beta is small enough for the series branch below) and three per beta (multiply, exp,
sum), except that the small betas share 2K passes (power sums, K <= 11);
``benchmarks/bench_bank_memory.py`` measures it against the bare matrix products.

Small betas (precision). At beta -> 0, log_norm(r) -> log n_b + beta * mean_b s(b, r): a large
constant (log 118,350 = 11.7) plus a signal that shrinks with beta, and only the signal ranks.
Two things keep it exact enough for any beta:

- A chunk of c rows whose exponents all lie in [-1, 0] (x = beta * spread <= 1, spread =
  max_r (m(r) - min_b s(b, r))) is summed as ``c + D``, D = sum_b expm1(beta t_b), t = s - m,
  then ``log(c) + log1p(D / c)`` in float64, not as ``log(sum exp(e))`` in float32: a float32 sum
  of c values near 1 is off by ~1 ulp of c (absolute error ~6e-8 in the log, whatever beta).
  D comes from the chunk's power sums M_k = sum_b t_b^k (float32 sums of float32 powers, shared
  by every such beta: two passes per k, where torch's scalar ``expm1`` cost ten exp passes per
  beta) as D = sum_{k<=K} beta^k M_k / k! in float64, K the smallest with
  x^K / (K+1)! <= 2^-26 (K = 11 at x = 1, 5 at x = 0.1, 3 at x = 0.001; ``_series_terms``).
  Truncation: per b the exponential series of y = beta t_b in [-1, 0] alternates with
  decreasing terms, so its tail is below |y|^(K+1) / (K+1)! and |D error| <= c x^(K+1)/(K+1)!.
  Rounding: t_b^k is within k 2^-24 relative and each float32 sum within ~log2(c) 2^-24 of
  sum_b |t_b|^k, so D is off by ~(log2(c) + K) 2^-24 sum_b (exp(|beta t_b|) - 1)
  <= (log2(c) + K) 2^-24 c (e^x - 1). With S = c + D >= c / e, the log is off by at most
  ~e x (2^-26 + 1.72 (log2(c) + K) 2^-24), an error proportional to beta, like the float32
  error of beta * s itself (s also carries its own float32 rounding, ~1e-7 per unit of |s|).
  Which betas take this branch depends on the chunk only, and each beta's value on its own K, so
  a beta's value still does not depend on the others in the pass. Other chunks (large beta,
  where the exponents spread) use ``sum exp(e)``, whose relative error ~2^-24 log2(c) is small
  next to beta * (score gaps) there.
- ``BankStats.log_mean(beta)`` = log_norm - log n_b (float64) is what scores use: the constant
  log n_b (the same for every r, so it changes no ranking) is removed *before* the cast to
  float32, so the float32 value carries its relative error on the ~beta-sized signal, not on 11.7.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from nnn._arrays import as_tensor, check_non_negative
from nnn._threads import one_thread_workers

_BYTES_PER_VALUE = 4  # float32
#: the (c, n_g) float32 buffers of a chunk: similarities, and one beta's shifted exponent
_SCORE_BUFFERS = 2
#: CPU chunks hold at most this many similarities (4 MiB a buffer), so that the passes over a
#: chunk after its matrix product read it from cache, not memory (several times faster at COCO
#: scale), but at least this many rows, for an efficient matrix product
_CPU_CHUNK_SCORES = 2**20
_CPU_MIN_ROWS = 256
#: bank x gallery sizes below this finish in about a second: no progress bar for them.
_PROGRESS_MIN_SCORES = 10**8


def chunk_rows(n_gallery: int, dim: int, memory_budget_mb: float, activation_k: int = 1) -> int:
    """Bank rows per chunk so that a chunk's two score buffers (c, n_g), its top-k values and
    ids (c, activation_k) and, on a GPU, its copy of the bank rows (c, d) fit in
    ``memory_budget_mb`` MiB."""
    per_row = ((_SCORE_BUFFERS * n_gallery + dim) * _BYTES_PER_VALUE
               + activation_k * (_BYTES_PER_VALUE + 8))
    return max(1, int(memory_budget_mb * 2**20 // per_row))


def check_memory_budget(memory_budget_mb) -> float:
    """Return ``memory_budget_mb`` as a finite float > 0, else raise ``ValueError``."""
    try:
        v = float(memory_budget_mb)
    except (TypeError, ValueError):
        raise ValueError(f"memory_budget_mb must be a number, got {memory_budget_mb!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError("memory_budget_mb must be a finite number > 0 (MiB), "
                         f"got {memory_budget_mb!r}")
    return v


def check_beta_grid(values, name: str) -> tuple[float, ...]:
    """``values`` (None = none) as a tuple of floats > 0, else ``ValueError`` naming ``name``."""
    out = tuple(check_non_negative(v, f"every value in {name}") for v in np.atleast_1d(
        () if values is None else values).tolist())
    if 0 in out:
        raise ValueError(f"{name} must hold betas > 0, got {list(out)} (a beta of 0 needs no "
                         "bank statistics)")
    return out


@dataclass(frozen=True)
class BankStats:
    """One bank's statistics against one gallery of n_g items, from one streamed pass.

    ``log_norms``: beta -> (n_g,) float64 ``log sum_b exp(beta * s(b, r))``, for every fitted
    beta; ``activation``: (n_g,) bool, gallery items in the top-``activation_k`` of at least one
    bank row, ties with its k-th included (``activation_k`` as given to ``bank_stats``);
    ``n_rows``: the bank size n_b.
    """

    log_norms: dict[float, np.ndarray]
    activation: np.ndarray
    n_rows: int

    def log_norm(self, beta: float, name: str = "beta") -> np.ndarray:
        """The (n_g,) float64 log-normaliser of ``beta``; ``ValueError`` if it was not fitted."""
        try:
            return self.log_norms[beta]
        except KeyError:
            raise ValueError(f"{name}={beta} was not fitted (fitted: {sorted(self.log_norms)}); "
                             "refit with it among the betas") from None

    def log_mean(self, beta: float, name: str = "beta") -> np.ndarray:
        """(n_g,) float64 ``log mean_b exp(beta * s(b, r))`` = ``log_norm(beta) - log(n_rows)``:
        the log-normaliser without its r-independent constant, ready for a float32 cast
        (module docstring, "Small betas")."""
        return self.log_norm(beta, name) - math.log(self.n_rows)


def _series_terms(x: float) -> int:
    """The smallest K >= 1 with x^K / (K+1)! <= 2^-26: exp's series cut after K terms is off by
    at most x * 2^-26 (relative, for exponents in [-x, 0], x <= 1; module docstring)."""
    k, bound = 1, x / 2
    while bound > 2.0**-26:
        k += 1
        bound *= x / (k + 1)
    return k


class _Stream:
    """One worker's share of a bank pass: reusable (c, n_g) buffers and running statistics
    (``log_norm`` (n_betas, n_g) float64, ``hits`` (n_g,): max_b s(b, r) - kth(b), >= 0 on
    the activation set), updated chunk by chunk (``add``)."""

    def __init__(self, gallery: torch.Tensor, betas: list[float], step: int, activation_k: int):
        n_g, dev = len(gallery), gallery.device
        self.gallery, self.betas, self.activation_k = gallery, betas, activation_k
        self.sims = torch.empty((step, n_g), dtype=torch.float32, device=dev)
        self.work = torch.empty((step, n_g), dtype=torch.float32, device=dev)
        self.log_norm = torch.full((len(betas), n_g), -math.inf, dtype=torch.float64, device=dev)
        self.hits = torch.full((n_g,), -math.inf, dtype=torch.float32, device=dev)
        self.smallest = min(betas)

    def add(self, xb: torch.Tensor) -> None:
        """Fold the bank rows ``xb`` (c, d) into the statistics."""
        rows = len(xb)
        s, work = torch.mm(xb, self.gallery.T, out=self.sims[:rows]), self.work[:rows]
        # activation: items at least as similar as some row's k-th most similar item, i.e.
        # max_b (s(b, r) - kth(b)) >= 0 (exact: for float32 x, y, x - y >= 0 iff x >= y)
        k = self.activation_k
        kth = (s.amax(dim=1, keepdim=True) if k == 1 else
               torch.topk(s, k, dim=1, sorted=False).values.amin(dim=1, keepdim=True))
        torch.maximum(self.hits, torch.sub(s, kth, out=work).amax(dim=0), out=self.hits)
        peak = s.amax(dim=0)                                           # (n_g,)
        # spread = max_r (m(r) - min_b s(b, r)) picks each beta's branch. Row 0's gaps are a
        # lower bound; only if the smallest beta times it is <= 1 can a beta take the expm1
        # branch, and only then is the exact spread (one more pass) needed: the same branches
        spread = float((peak - s[0]).max())
        if self.smallest * spread <= 1.0:
            spread = float((peak - s.amin(dim=0)).max())
        s.sub_(peak)                                                   # t = s - m <= 0
        peak = peak.double()
        terms = {beta: _series_terms(beta * spread) for beta in self.betas
                 if beta * spread <= 1.0}
        moments = []                              # M_k = sum_b t_b^k, k = 1 .. max K
        for k in range(1, max(terms.values(), default=0) + 1):
            power = work.copy_(s) if k == 1 else work.mul_(s)
            moments.append(power.sum(dim=0).double())
        for i, beta in enumerate(self.betas):
            if beta in terms:  # all beta t in [-1, 0]: sum exp(beta t) = c + D (module docstring)
                below, coef = torch.zeros_like(peak), 1.0
                for k in range(1, terms[beta] + 1):
                    coef *= beta / k                                   # beta^k / k!
                    below += coef * moments[k - 1]
                chunk = torch.log1p(below / rows) + math.log(rows)
            else:  # in place in ``work``, unlike torch.logsumexp (a (c, n_g) block)
                chunk = torch.mul(s, beta, out=work).exp_().sum(dim=0).double().log_()
            self.log_norm[i] = torch.logaddexp(self.log_norm[i], chunk + beta * peak)


def bank_stats(bank: np.ndarray, gallery: torch.Tensor, *, betas: Sequence[float],
               activation_k: int, memory_budget_mb: float, desc: str = "bank",
               progress: bool = True) -> BankStats:
    """Stream ``bank`` (n_b, d) float32 once against ``gallery`` (n_g, d) float32 on its device.

    ``betas``: the betas (each > 0; repeats are computed once) whose log-normalisers to compute.
    Raises ``ValueError`` if a log-normaliser leaves the float32 range (scores are float32).

    On the CPU the chunks are shared out to ``torch.get_num_threads()`` workers (chunk j to
    worker j mod w), each running its matrix products and passes on one thread, so that no
    pass waits for the other threads (a two-thread pass over a cache-sized chunk costs more in
    its start and join than in its work when another job shares the cores); the workers'
    statistics are merged in worker order, so a result depends on the thread count only
    through float64 rounding, never on the betas that share the pass.
    """
    betas = list(dict.fromkeys(float(b) for b in betas))
    if not betas or not all(b > 0 for b in betas):
        raise ValueError(f"betas must be a non-empty list of numbers > 0, got {betas}")
    (n_b, d), n_g = bank.shape, len(gallery)
    dev = gallery.device
    workers = torch.get_num_threads() if dev.type == "cpu" else 1
    step = min(n_b, chunk_rows(n_g, d, memory_budget_mb / workers, activation_k))
    if dev.type == "cpu":   # chunks that stay in cache between the passes over them
        step = min(step, max(_CPU_MIN_ROWS, _CPU_CHUNK_SCORES // n_g))
    starts = range(0, n_b, step)
    workers = max(1, min(workers, len(starts)))
    bar = tqdm(total=len(starts), desc=desc, unit="chunk",
               disable=not progress or n_b * n_g < _PROGRESS_MIN_SCORES)

    def run(worker: int) -> _Stream:
        stream = _Stream(gallery, betas, step, activation_k)
        for start in starts[worker::workers]:
            stream.add(as_tensor(bank[start:start + step]).to(dev))
            bar.update()
        return stream

    parts = one_thread_workers(run, workers)
    bar.close()
    log_norm, hits = parts[0].log_norm, parts[0].hits
    with torch.inference_mode():
        for part in parts[1:]:
            for i in range(len(betas)):   # row by row: each beta's row sees the same operations
                log_norm[i] = torch.logaddexp(log_norm[i], part.log_norm[i])
            hits = torch.maximum(hits, part.hits)
    bad = [b for b, row in zip(betas, log_norm) if not torch.isfinite(row.float()).all()]
    if bad:
        raise ValueError(f"beta {bad} overflows float32 (beta * similarity must stay below "
                         "3e38); use a smaller beta")
    return BankStats(dict(zip(betas, log_norm.cpu().numpy())), (hits >= 0).cpu().numpy(),
                     n_b)


def gate_groups(key: torch.Tensor | None) -> list[tuple[int, slice | torch.Tensor]]:
    """Rows of a query block grouped by their gate key (``_gate_key`` of QBNorm / DBNorm):
    [(key value, rows)], rows a ``slice`` where the group is contiguous (no copies: the tuner
    sorts its blocks by key) and a LongTensor of row ids otherwise; ``key`` None (no gates):
    one group, key 0, all rows."""
    if key is None:
        return [(0, slice(None))]
    groups = []
    for value in torch.unique(key).tolist():
        rows = torch.nonzero(key == value).squeeze(1)
        first, last = int(rows[0]), int(rows[-1])
        groups.append((value, slice(first, last + 1) if last - first + 1 == len(rows) else rows))
    return groups
