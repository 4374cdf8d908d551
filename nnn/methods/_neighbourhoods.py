"""Bank neighbourhoods of gallery items, streamed: the shared fit of MP, LS / NICDM and DSL.

Mutual proximity, local scaling and DisSimLocal were defined for one set of objects, each with
its k nearest neighbours in that set. For query -> gallery retrieval here, the neighbourhood of
a gallery item r is taken from the *query bank* B_q (reference queries, the modality that will
ask for r, as NNN's bias and CSLS's r_B(r)): its k most similar bank rows. The neighbourhood of a
query q is its k most similar gallery items, found per query block at scoring time (as CSLS's
r_B(q)). ``bank_neighbourhoods`` computes the gallery side in one pass over the bank:

- ``sims`` (n_g, k) float32, descending: the k largest s(b, r) = b . r over b in B_q;
- ``ids`` (n_g, k) int64 (``ids=True``): the bank rows holding them (DSL's centroids);
- ``dist_mean`` / ``dist_var`` (n_g,) float64 (``moments=True``): the mean and population
  variance over the WHOLE bank of d(b, r), with d^2 = max(2 - 2 s, 0) (Gaussian MP over all bank
  rows). They are accumulated about a per-row shift c (the first chunk's mean): sums of d - c
  and (d - c)^2, so that the variance is not the difference of two large, nearly equal sums
  (E[d^2] - E[d]^2 loses every digit when the spread is small against the mean).

The bank is read in chunks of ``bank_chunk_rows`` rows, so that the (n_g, c) similarity buffer
(and, with ``moments``, a second (n_g, c) buffer of distances) fits ``memory_budget_mb`` MiB; a
running top-k is merged after each chunk. The bank x gallery matrix (11.8 GB at COCO scale,
591,753 x 5,000) is never built; what is kept is O(n_g k).

Distance. For unit vectors the Euclidean distance is d(x, y) = sqrt(2 - 2 x . y); MP and LS use
that function of the similarity for every pair (``distance``; float32 rounding can push
2 - 2 s slightly below 0, hence the clamp), DSL uses the squared Euclidean distance itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from nnn._arrays import as_tensor, check_positive_int, owned_matrix
from nnn.methods._bank_stats import check_memory_budget
from nnn.methods.base import RetrievalMethod

_BYTES = 4  # float32
#: bank x gallery sizes below this finish in about a second: no progress bar for them.
_PROGRESS_MIN_SCORES = 10**8


def distance(s: torch.Tensor) -> torch.Tensor:
    """d = sqrt(max(2 - 2 s, 0)): the Euclidean distance of unit vectors with similarity s."""
    return (2 - 2 * s).clamp_(min=0).sqrt_()


def bank_chunk_rows(n_gallery: int, dim: int, k: int, memory_budget_mb: float,
                    moments: bool) -> int:
    """Bank rows per chunk: the (n_g, c) similarity buffer (two with ``moments``), the (n_g, 2k)
    top-k workspace (values and ids) and, on a GPU, the chunk's rows (c, d) within
    ``memory_budget_mb`` MiB (at least one row); the selections' temporaries take at most a
    quarter of the budget on top (``_selection_rows``)."""
    per_row = ((1 + moments) * n_gallery + dim) * _BYTES
    fixed = 2 * n_gallery * k * (_BYTES + 8)  # the (n_g, 2k) workspace of values and ids
    return max(1, int((memory_budget_mb * 2**20 - fixed) // per_row))


@dataclass(frozen=True)
class Neighbourhoods:
    """A gallery's neighbourhoods in a bank (module docstring); ``n_bank``: the bank size."""

    sims: np.ndarray
    ids: np.ndarray | None
    dist_mean: np.ndarray | None
    dist_var: np.ndarray | None
    n_bank: int


def bank_neighbourhoods(gallery: torch.Tensor, bank: np.ndarray, k: int, *, ids: bool = False,
                        moments: bool = False, memory_budget_mb: float = 256.0,
                        desc: str = "bank neighbourhoods", progress: bool = True
                        ) -> Neighbourhoods:
    """Stream ``bank`` (n_b, d) float32 once against ``gallery`` (n_g, d) float32 on its device
    (module docstring). ``k <= n_b`` is the caller's check.

    Every buffer is allocated once: the (n_g, c) similarity block (and distance block), and an
    (n_g, 2k) workspace of values and ids whose first k columns hold the running top-k and whose
    last k receive a chunk's; both selections run a few gallery rows at a time
    (``_topk_rows``), so their temporaries stay small whatever n_g, c and k.
    """
    (n_b, d), n_g, dev = bank.shape, len(gallery), gallery.device
    step = min(n_b, bank_chunk_rows(n_g, d, k, memory_budget_mb, moments))
    sims_buf = torch.empty((n_g, step), dtype=torch.float32, device=dev)
    dist_buf = torch.empty((n_g, step), dtype=torch.float32, device=dev) if moments else None
    vals = torch.full((n_g, 2 * k), -torch.inf, dtype=torch.float32, device=dev)
    idx = torch.full((n_g, 2 * k), -1, dtype=torch.int64, device=dev)
    shift = None                                  # (n_g, 1): the first chunk's mean distance
    dev_sum = torch.zeros(n_g, dtype=torch.float64, device=dev)      # sum of d - shift
    dev_sq_sum = torch.zeros(n_g, dtype=torch.float64, device=dev)   # sum of (d - shift)^2
    rows = _selection_rows(step + k, memory_budget_mb)
    bar = tqdm(range(0, n_b, step), desc=desc, unit="chunk", leave=False,
               disable=not progress or n_b * n_g < _PROGRESS_MIN_SCORES)
    with torch.inference_mode():
        for start in bar:
            xb = as_tensor(bank[start:start + step]).to(dev)
            s = torch.mm(gallery, xb.T, out=sims_buf[:, :len(xb)])           # (n_g, c)
            if moments:
                dist = torch.mul(s, -2, out=dist_buf[:, :len(xb)]).add_(2).clamp_(min=0).sqrt_()
                if shift is None:
                    shift = dist.mean(dim=1, keepdim=True)
                # float32 (pairwise) sums per chunk, merged in float64: a dtype=float64 sum
                # would first copy the whole (n_g, c) block to float64
                dev_sum += dist.sub_(shift).sum(dim=1).double()
                dev_sq_sum += dist.square_().sum(dim=1).double()
            kk = min(k, len(xb))
            for r0 in range(0, n_g, rows):
                r1 = min(n_g, r0 + rows)
                top, pos = torch.topk(s[r0:r1], kk, dim=1, sorted=False)
                vals[r0:r1, k:k + kk] = top
                idx[r0:r1, k:k + kk] = pos + start
                best, pos = torch.topk(vals[r0:r1, :k + kk], k, dim=1, sorted=False)
                idx[r0:r1, :k] = idx[r0:r1, :k + kk].gather(1, pos)
                vals[r0:r1, :k] = best
        best, best_ids = vals[:, :k], idx[:, :k]
        order = torch.argsort(best, dim=1, descending=True, stable=True)
        best, best_ids = best.gather(1, order), best_ids.gather(1, order)
    mean = var = None
    if moments:
        mean_dev = dev_sum / n_b
        mean = (shift[:, 0].double() + mean_dev).cpu().numpy()
        var = (dev_sq_sum / n_b - mean_dev ** 2).clamp_(min=0).cpu().numpy()
    return Neighbourhoods(best.cpu().numpy(), best_ids.cpu().numpy() if ids else None, mean,
                          var, n_b)


def _selection_rows(width: int, memory_budget_mb: float) -> int:
    """Gallery rows per ``torch.topk`` call over rows of ``width`` values: a selection may work
    on a copy of its rows with int64 ids (12 bytes per value); the rows per call keep that copy
    within a quarter of ``memory_budget_mb``."""
    return max(1, int(memory_budget_mb * 2**20 / 4 // (width * 12)))


class BankNeighbourhoodMethod(RetrievalMethod):
    """Shared part of MP, LS / NICDM and DSL: a neighbourhood size k (tuned), a top-k table of
    width ``k_max_`` = max(k, k_max) from one bank pass (``neighbourhoods_``), and
    ``with_params(k=)`` for any k <= ``k_max_`` without another pass.

    Subclasses set ``_needs_ids`` / ``_needs_moments`` and implement ``_set_k`` (the fitted
    state of one k from ``neighbourhoods_``) and ``_score_block``.
    """

    requires = ("query_bank",)
    tuned_params = ("k",)
    _needs_ids = False
    _needs_moments = False
    #: the smallest k the method's statistics make sense for
    _min_k = 1

    def __init__(self, *, k: int | None = 10, k_max: int | None = None,
                 memory_budget_mb: float = 256.0, progress: bool = True,
                 batch_size: int = 4096, device: str = "cpu", normalize: bool = False):
        super().__init__(batch_size=batch_size, device=device, normalize=normalize)
        self.k = None if k is None else self._check_k(k)
        self.k_max = None if k_max is None else self._check_k(k_max, "k_max")
        self.memory_budget_mb = check_memory_budget(memory_budget_mb)
        self.progress = bool(progress)

    def _check_k(self, k, name: str = "k") -> int:
        k = check_positive_int(k, name)
        if k < self._min_k:
            raise ValueError(f"{name}={k} is too small for {type(self).__name__}: it needs the "
                             f"spread of at least {self._min_k} neighbours; use {name} >= "
                             f"{self._min_k}")
        return k

    def _check_bank(self, bank, name: str, dim: int):
        """DSL keeps the query bank for its centroids: in memory of its own (``owned_matrix``);
        the others read it during ``fit`` only."""
        if self._needs_ids and name == "query_bank":
            return owned_matrix(bank, name, dim=dim, normalize=self.normalize)
        return super()._check_bank(bank, name, dim)

    def _table_width(self) -> int:
        """The width of the top-k table to fit (at least 1)."""
        return max(self.k or 1, self.k_max or 1)

    def _fit(self, gallery, query_bank, gallery_bank):
        name = type(self).__name__
        width = self._table_width()
        if width > len(query_bank):
            which = "k" if width == (self.k or 1) else "k_max"
            raise ValueError(f"{which}={width} is larger than the query_bank ({len(query_bank)} "
                             f"rows); {name} uses the k nearest bank rows of each gallery item: "
                             f"use {which} <= {len(query_bank)}")
        self._check_gallery_k(self.k, len(gallery))
        self.neighbourhoods_ = bank_neighbourhoods(
            self._gallery_t, query_bank, width, ids=self._needs_ids, moments=self._needs_moments,
            memory_budget_mb=self.memory_budget_mb, desc=f"{name} query bank",
            progress=self.progress)
        self.k_max_ = width
        self._query_bank = query_bank if self._needs_ids else None
        self._set_k(self.k)

    def _set_params(self, params: dict) -> None:
        """``with_params(k=)``: another k <= ``k_max_``, from the stored top-k table."""
        k = self._check_k(params.get("k", self.k))
        if k > self.k_max_:
            raise ValueError(f"k={k} is larger than the stored top-k table (k_max_="
                             f"{self.k_max_}); refit with k_max >= {k}")
        self._check_gallery_k(k, len(self.gallery_))
        self.k = k
        self._set_k(k)

    def _check_gallery_k(self, k: int | None, n_gallery: int) -> None:
        if k is not None and k > n_gallery:
            raise ValueError(f"k={k} is larger than the gallery ({n_gallery} rows); "
                             f"{type(self).__name__} uses the k nearest gallery items of each "
                             f"query: use k <= {n_gallery}")

    def _set_k(self, k: int | None) -> None:
        raise NotImplementedError

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device_)
