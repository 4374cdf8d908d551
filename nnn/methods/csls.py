"""CSLS, cross-domain similarity local scaling (Conneau et al., 2018), with a query bank."""

from __future__ import annotations

import torch

from nnn._arrays import as_tensor, check_positive_int
from nnn.methods._exact import block_topk
from nnn.methods._topk import ReferenceIndex, ReferenceTopK
from nnn.methods.base import RetrievalMethod
from nnn.methods.grids import K_GRID


class CSLS(RetrievalMethod):
    """``score(q, r) = 2 s(q, r) - r_B(r) - r_B(q)``.

    r_B(r) = ``neighbourhood_`` (n_g,) float32: mean of the k largest similarities of gallery item
    r to the query bank (NNN's top-k machinery, exact backend, with its ``precision`` routes; or
    the FAISS search of a prebuilt ``ReferenceIndex`` passed as ``query_bank``, e.g. one loaded
    with ``ReferenceIndex.load``; ``nprobe``: the IVF lists it probes, None for
    ``default_nprobe``). r_B(q): mean of the k largest similarities of query q to the
    gallery, computed per query block. r_B(q) is constant per query, so CSLS ranks like NNN with
    alpha = 0.5 and the same k.
    """

    requires = ("query_bank",)
    option, paper_name = "csls", "CSLS"
    tuned_params = ("k",)
    tuning_grid = {"ks": K_GRID}

    def __init__(self, *, k: int = 10, nprobe: int | None = None, dtype: str = "float32",
                 precision: str = "auto", memory_budget_mb: float = 512.0,
                 ref_batch_size: int | None = None, progress: bool = True,
                 batch_size: int = 4096, device: str = "cpu", normalize: bool = False):
        super().__init__(batch_size=batch_size, device=device, normalize=normalize)
        self.k = check_positive_int(k, "k")
        self.nprobe = None if nprobe is None else check_positive_int(nprobe, "nprobe")
        self.dtype, self.memory_budget_mb, self.ref_batch_size = dtype, memory_budget_mb, ref_batch_size
        self.precision, self.progress = precision, progress
        self._search = ReferenceTopK(dtype=dtype, precision=precision,
                                     memory_budget_mb=memory_budget_mb,
                                     ref_batch_size=ref_batch_size, progress=progress)
        if device == "cpu":
            self._search.check_device(torch.device("cpu"))

    def _check_bank(self, bank, name, dim):
        """An array bank is checked as usual; a ``ReferenceIndex`` query bank of the gallery's
        dimension is searched as it is."""
        if not isinstance(bank, ReferenceIndex):
            return super()._check_bank(bank, name, dim)
        if name != "query_bank" or bank.dim != dim:
            raise ValueError(f"CSLS takes a ReferenceIndex only as query_bank, of the gallery's "
                             f"dimension {dim} (got it as {name}, dimension {bank.dim}); build "
                             "it from reference queries of the gallery's model")
        return bank

    def _fit(self, gallery, query_bank, gallery_bank):
        for what, n in (("query_bank", len(query_bank)), ("gallery", len(gallery))):
            if self.k > n:
                raise ValueError(f"k={self.k} is larger than the {what} ({n} rows); CSLS averages "
                                 f"the k nearest neighbours on both sides: use k <= {n}")
        if isinstance(query_bank, ReferenceIndex):
            top = query_bank.topk(gallery, self.k, nprobe=self.nprobe, device=self.device_,
                                  memory_budget_mb=self.memory_budget_mb)         # (n_g, k)
        else:
            top = self._search.run(gallery, query_bank, self.k, self.device_)   # (n_g, k)
        self.neighbourhood_ = top.mean(axis=1, dtype="float64").astype("float32")
        self._neighbourhood_t = as_tensor(self.neighbourhood_).to(self.device_)

    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        s = q @ self._gallery_t.T                                                 # (b, n_g)
        query_side = block_topk(s, self.k).mean(dim=1, keepdim=True)              # (b, 1)
        return 2 * s - self._neighbourhood_t - query_side
