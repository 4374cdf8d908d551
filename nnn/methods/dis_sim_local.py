"""DisSimLocal (Hara et al., AAAI 2016): squared distances minus local-centroid terms, with a
query bank."""

from __future__ import annotations

import numpy as np
import torch

from nnn.methods._neighbourhoods import BankNeighbourhoodMethod
from nnn.methods.grids import K_GRID


class DisSimLocal(BankNeighbourhoodMethod):
    """DisSimLocal, the localised centering dissimilarity of Hara, Suzuki, Kobayashi, Fukumizu &
    Radovanovic ("Flattening the density gradient for eliminating spatial centrality to reduce
    hubness", AAAI 2016):

        d'(x, y) = ||x - y||^2 - ||x - c_x||^2 - ||y - c_y||^2,

    c_x the centroid (mean) of the k nearest neighbours of x in the data set.

    Adaptation to query -> gallery retrieval: c_r of a gallery item r is the centroid of its k
    nearest rows of the query bank (by inner product; ids from one streamed pass,
    ``nnn.methods._neighbourhoods``); c_q of a query is the centroid of its k nearest gallery
    items (per query block). ``score`` returns -d'(q, r) (higher is better), with the squared
    Euclidean distances of the rows as given (no unit-norm assumption):

        score = 2 q.r - ||q||^2 - ||r||^2 + ||q - c_q||^2 + ||r - c_r||^2.

    The query terms are constant per query, so they do not change a query's ranking; they are
    kept so that the score is the formula's. ||q - c_q||^2 = ||q||^2 - 2 q.c_q + ||c_q||^2 is
    computed from the block's similarities (q.c_q is the mean of the k largest) and c_q = M G
    (M the (b, n_g) matrix of 1/k at the neighbours), not from a (b, k, d) gather.

    Fitted: ``gallery_term_`` (n_g,) float32 = ||r - c_r||^2 - ||r||^2 for ``k``;
    ``neighbourhoods_.ids`` keeps the bank ids of the k_max nearest, so ``with_params(k=)``
    recomputes the centroids (in gallery blocks within ``memory_budget_mb``), no bank pass; it
    reads the query bank given to ``fit`` (a reference, not a copy: 1.2 GB at COCO scale).
    """

    option, paper_name = "dsl", "DSL"
    tuning_grid = {"ks": K_GRID}
    _needs_ids = True

    def __init__(self, *, k: int = 10, k_max: int | None = None,
                 memory_budget_mb: float = 256.0, progress: bool = True,
                 batch_size: int = 4096, device: str = "cpu", normalize: bool = False):
        if k is None:
            raise ValueError("k must be a positive integer, got None")
        super().__init__(k=k, k_max=k_max, memory_budget_mb=memory_budget_mb, progress=progress,
                         batch_size=batch_size, device=device, normalize=normalize)

    def _set_k(self, k: int) -> None:
        g, bank, ids = self.gallery_, self._query_bank, self.neighbourhoods_.ids[:, :k]
        rows = max(1, int(self.memory_budget_mb * 2**20 // (8 * k * g.shape[1])))
        term = np.empty(len(g), dtype=np.float64)
        for start in range(0, len(g), rows):
            r = g[start:start + rows].astype(np.float64)
            centroid = bank[ids[start:start + rows]].mean(axis=1, dtype=np.float64)  # (b, d)
            term[start:start + rows] = (((r - centroid) ** 2).sum(axis=1)
                                        - (r ** 2).sum(axis=1))
        self.gallery_term_ = term.astype(np.float32)
        self._term_t = self._to_device(self.gallery_term_)

    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        s = q @ self._gallery_t.T                                          # (b, n_g)
        k = self.k
        vals, ids = torch.topk(s, k, dim=1, sorted=False)
        weights = torch.zeros_like(s).scatter_(1, ids, 1.0 / k)
        centroid = weights @ self._gallery_t                               # (b, d)
        # ||q - c_q||^2 - ||q||^2 = ||c_q||^2 - 2 q.c_q
        query_term = (centroid * centroid).sum(dim=1, keepdim=True) - 2 * vals.mean(
            dim=1, keepdim=True)
        return 2 * s + query_term + self._term_t
