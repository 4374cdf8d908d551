"""Local scaling (Zelnik-Manor & Perona, 2005) and NICDM (Jegou et al., 2010), with a query bank."""

from __future__ import annotations

import torch

from nnn._arrays import check_positive_int
from nnn.methods._exact import block_topk
from nnn.methods._neighbourhoods import BankNeighbourhoodMethod, distance
from nnn.methods.grids import K_GRID

VARIANTS = ("standard", "nicdm")
#: scales below this (a k-th neighbour identical to the item) are raised to it: no division by 0
MIN_SCALE = 1e-6


class LocalScaling(BankNeighbourhoodMethod):
    """Local scaling of the distance d(q, r) = sqrt(2 - 2 s(q, r)) (unit vectors) by each side's
    neighbourhood.

    Original definitions (one set of objects, each with its k nearest neighbours in it):
    local scaling (Zelnik-Manor & Perona, NIPS 2005; as a hubness reduction, Schnitzer et al.,
    JMLR 2012) LS(x, y) = 1 - exp(-d(x, y)^2 / (sigma_x sigma_y)), sigma_x = distance of x
    to its k-th nearest neighbour; NICDM (Jegou et al., TPAMI 2010, "non-iterative contextual
    dissimilarity measure"; as a hubness reduction, Schnitzer et al.)
    NICDM(x, y) = d(x, y) / sqrt(mu_x mu_y), mu_x = mean distance of x to its k nearest
    neighbours.

    Adaptation to query -> gallery retrieval: sigma_r / mu_r of a gallery item r come from its k
    nearest rows of the query bank (``neighbourhoods_``, one streamed pass, see
    ``nnn.methods._neighbourhoods``); sigma_q / mu_q of a query from its k nearest gallery items
    (per query block). Scores rank descending, so ``score`` returns

        variant "standard": -d(q, r)^2 / (sigma_q sigma_r)   (= log(1 - LS), LS's order, no
                            exp underflow),
        variant "nicdm":    -d(q, r) / sqrt(mu_q mu_r).

    Scales are raised to at least ``MIN_SCALE``. Fitted: ``scale_`` (n_g,) float32 (sigma_r or
    mu_r for ``k``); ``with_params(k=)`` for any k <= ``k_max_`` reuses the table.
    """

    option, paper_name = "ls", "LS"
    tuning_grid = {"ks": K_GRID}

    def __init__(self, *, k: int = 10, variant: str = "standard", k_max: int | None = None,
                 memory_budget_mb: float = 256.0, progress: bool = True,
                 batch_size: int = 4096, device: str = "cpu", normalize: bool = False):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        check_positive_int(k, "k")  # None is not a local scale
        super().__init__(k=k, k_max=k_max, memory_budget_mb=memory_budget_mb, progress=progress,
                         batch_size=batch_size, device=device, normalize=normalize)
        self.variant = variant

    def _set_k(self, k: int) -> None:
        dist = distance(torch.from_numpy(self.neighbourhoods_.sims[:, :k]).double())
        scale = dist[:, -1] if self.variant == "standard" else dist.mean(dim=1)
        self.scale_ = scale.clamp(min=MIN_SCALE).float().numpy()
        self._scale_t = self._to_device(self.scale_)

    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        s = q @ self._gallery_t.T                                          # (b, n_g)
        top = block_topk(s, self.k)                                        # (b, k), unordered
        if self.variant == "standard":
            query_scale = distance(top.amin(dim=1, keepdim=True))          # k-th neighbour
            scale = query_scale.clamp_(min=MIN_SCALE) * self._scale_t
            return (2 - 2 * s).clamp_(min=0).div_(scale).neg_()
        query_scale = distance(top).mean(dim=1, keepdim=True).clamp_(min=MIN_SCALE)
        return distance(s).div_((query_scale * self._scale_t).sqrt_()).neg_()
