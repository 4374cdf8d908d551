"""NNN, Nearest Neighbor Normalization (Chowdhury et al., EMNLP 2024).

Each gallery item r gets a bias b(r) = alpha * mean of the k largest s(q', r) over a reference
set of queries q' (the query bank); the score is s(q, r) - b(r).
"""

from __future__ import annotations

import numpy as np
import torch

from nnn._arrays import check_non_negative, check_positive_int
from nnn.methods._topk import ReferenceIndex, ReferenceTopK
from nnn.methods.base import RetrievalMethod
from nnn.methods.grids import ALPHA_GRID, K_GRID


class NNN(RetrievalMethod):
    """Nearest Neighbor Normalization: ``score(q, r) = q . r - bias_[r]``.

    ``fit(gallery (n_g, d), query_bank=refs (n_r, d))`` finds, for every gallery item, its
    K_max = max(k, k_max) largest similarities to the references once and keeps them sorted in
    ``topk_sims_`` (n_g, K_max) float32. ``bias_`` (n_g,) float32 = alpha * mean of the first k;
    any other k <= K_max and alpha come from the same table without another pass
    (``bias_for``, ``bias_grid``, ``with_params``).

    Backends: "exact" (GEMM + selection on ``device``; references streamed in ``ref_batch_size``
    chunks if given; similarity blocks kept within ``memory_budget_mb``). Its ``precision``
    "auto" (default) takes the fastest route to the float32 result on this CPU: a bfloat16 or
    float16 GEMM that only pre-selects candidates, re-scored in float32 (with a proven error
    bound, ``nnn.methods._exact.LowPrecisionBlocks``), or torch or NumPy float32
    (``choose_route``); ``route_`` says which ran. ``dtype`` "float16"/"bfloat16" (CUDA) runs
    the whole GEMM in half precision instead (approximate). Or
    "faiss" (``index`` "flat", "ivf" or "ivf_fp16"; on GPU FAISS when available and the device is
    CUDA, see ``use_gpu_faiss``). IVF: ``nlist`` lists (None: about 4 sqrt(n_refs)), ``nprobe``
    of them searched per gallery item (None: enough to scan about max(4 K_max, 512) references,
    every list below ~512 references; see ``nnn.methods._topk.default_nprobe``). Given an array
    as ``query_bank``, ``fit`` builds the index each time; given a prebuilt ``ReferenceIndex``
    (backend "faiss" only), it only searches it: the prebuilt index's kind, nlist and GPU
    placement win over ``index``, ``nlist`` and ``use_gpu_faiss``, while ``nprobe`` and k apply
    per fit. A gallery item whose probed lists hold fewer than K_max references
    gets its exact top-K_max (with a logged warning). Scoring always runs in float32 on
    ``device``, ``batch_size`` queries at a time.
    """

    requires = ("query_bank",)
    option, paper_name = "nnn", "NNN"
    tuned_params = ("k", "alpha")
    tuning_grid = {"alphas": ALPHA_GRID, "ks": K_GRID}

    def __init__(self, *, k: int = 16, alpha: float = 0.75, k_max: int | None = None,
                 backend: str = "exact", index: str = "flat", nlist: int | None = None,
                 nprobe: int | None = None, dtype: str = "float32", precision: str = "auto",
                 memory_budget_mb: float = 512.0, ref_batch_size: int | None = None,
                 use_gpu_faiss: bool | str = "auto",
                 progress: bool = True, batch_size: int = 4096, device: str = "cpu",
                 normalize: bool = False):
        super().__init__(batch_size=batch_size, device=device, normalize=normalize)
        self.k = check_positive_int(k, "k")
        self.alpha = check_non_negative(alpha, "alpha")
        self.k_max = None if k_max is None else check_positive_int(k_max, "k_max")
        self.backend, self.index, self.nlist, self.nprobe = backend, index, nlist, nprobe
        self.dtype, self.memory_budget_mb, self.ref_batch_size = dtype, memory_budget_mb, ref_batch_size
        self.precision, self.use_gpu_faiss, self.progress = precision, use_gpu_faiss, progress
        self._search = ReferenceTopK(
            backend=backend, index=index, nlist=nlist, nprobe=nprobe, dtype=dtype,
            precision=precision,
            memory_budget_mb=memory_budget_mb, ref_batch_size=ref_batch_size,
            use_gpu_faiss=use_gpu_faiss, progress=progress)
        if device == "cpu":
            self._search.check_device(torch.device("cpu"))

    # -- fitting -------------------------------------------------------------------------------
    def _check_bank(self, bank, name, dim):
        """An array bank is checked as usual; a ``ReferenceIndex`` query bank is taken as is."""
        if not isinstance(bank, ReferenceIndex):
            return super()._check_bank(bank, name, dim)
        if name != "query_bank" or self.backend != "faiss":
            raise ValueError(f"a ReferenceIndex can only be NNN's query_bank with backend='faiss' "
                             f"(got it as {name} with backend={self.backend!r}); use "
                             "NNN(backend='faiss', ...) or pass the reference array")
        if bank.dim != dim:
            raise ValueError(f"query_bank is a ReferenceIndex of dimension {bank.dim} but the "
                             f"gallery has dimension {dim}; build the index from references "
                             "of the same model as the gallery")
        return bank

    def _fit(self, gallery, query_bank, gallery_bank):
        n_refs = len(query_bank)
        k_table = max(self.k, self.k_max or self.k)
        for name, value in (("k", self.k), ("k_max", k_table)):
            if value > n_refs:
                raise ValueError(f"{name}={value} is larger than the number of references "
                                 f"(query_bank has {n_refs} rows); use {name} <= {n_refs} or "
                                 "a larger query bank")
        self.route_ = self._search.route(len(gallery), query_bank, k_table, self.device_)
        self.topk_sims_ = self._search.run(gallery, query_bank, k_table, self.device_)
        self.k_max_ = k_table
        self.n_references_ = n_refs
        self._cumsum = None
        self._set_bias(self._bias(self.k, self.alpha))

    def _set_bias(self, bias: np.ndarray) -> None:
        self.bias_ = bias
        self._bias_t = torch.from_numpy(bias).to(self.device_)

    def _table_cumsum(self) -> np.ndarray:
        """Running sums of ``topk_sims_`` along K, (n_g, K_max) float64, computed once."""
        if self._cumsum is None:
            self._cumsum = np.cumsum(self.topk_sims_, axis=1, dtype=np.float64)
        return self._cumsum

    def _check_table_k(self, k) -> int:
        self._require_fitted()
        k = check_positive_int(k, "k")
        if k > self.k_max_:
            raise ValueError(f"k={k} is larger than the stored top-k table (k_max_={self.k_max_})"
                             f"; refit with k_max >= {k} (at most the {self.n_references_} "
                             "references)")
        return k

    # -- biases from the table -----------------------------------------------------------------
    def bias_for(self, k: int, alpha: float) -> np.ndarray:
        """Biases (n_g,) float32 = alpha * mean of the k largest reference similarities."""
        return self._bias(self._check_table_k(k), check_non_negative(alpha, "alpha"))

    def _bias(self, k: int, alpha: float) -> np.ndarray:
        return (alpha / k * self._table_cumsum()[:, k - 1]).astype(np.float32)

    def bias_grid(self, ks, alphas) -> np.ndarray:
        """Biases for every (alpha, k): (len(alphas), len(ks), n_g) float32, from one table."""
        ks = np.array([self._check_table_k(k) for k in ks])
        alphas = np.array([check_non_negative(a, "alpha") for a in alphas], dtype=np.float64)
        scale = alphas[:, None] / ks[None, :]                                 # (n_a, n_k)
        sums = self._table_cumsum()[:, ks - 1].T                              # (n_k, n_g)
        # alpha / k * sum, as ``_bias`` computes it: the same float32 bits as one fit's bias
        return (scale[:, :, None] * sums[None]).astype(np.float32)

    def _set_params(self, params: dict) -> None:
        """``with_params(k=, alpha=)``: another k (<= ``k_max_``) and/or alpha; the copy shares
        the top-k table."""
        self.k = self._check_table_k(params.get("k", self.k))
        self.alpha = check_non_negative(params.get("alpha", self.alpha), "alpha")
        self._set_bias(self._bias(self.k, self.alpha))

    # -- scoring -------------------------------------------------------------------------------
    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        return q @ self._gallery_t.T - self._bias_t

    def fold(self):
        """NNN as a plain inner-product problem.

        Returns ``(gallery_aug, fold_queries)``: gallery_aug (n_g, d+1) float32 = [r, -b(r)] and
        the method ``fold_queries`` mapping queries (n_q, d) to [q, 1] (n_q, d+1), so that
        <[q, 1], [r, -b(r)]> = s(q, r) - b(r) and any inner-product index (e.g.
        ``faiss.IndexFlatIP``) over gallery_aug returns NNN's ranking.
        """
        self._require_fitted()
        return fold(self.gallery_, self.bias_), self.fold_queries

    def fold_queries(self, queries) -> np.ndarray:
        """Queries (n_q, d) -> [q, 1] (n_q, d+1) float32, for an index over ``fold()``'s gallery."""
        return fold_queries(self._check_queries(queries))


def fold(rows: np.ndarray, biases: np.ndarray, width: int | None = None) -> np.ndarray:
    """[rows, -biases, 0 ...] (b, ``width``) float32 (``width`` >= d + 1, default d + 1): the
    gallery side of NNN as an inner product."""
    d = rows.shape[1]
    width = d + 1 if width is None else width
    out = np.zeros((len(rows), width), dtype=np.float32) if width > d + 1 else \
        np.empty((len(rows), width), dtype=np.float32)
    out[:, :d] = rows
    out[:, d] = -biases
    return out


def fold_queries(queries: np.ndarray, width: int | None = None) -> np.ndarray:
    """[q, 1, 0 ...] (n_q, ``width``) float32: the query side."""
    return fold(queries, -np.ones(len(queries), dtype=np.float32), width)
