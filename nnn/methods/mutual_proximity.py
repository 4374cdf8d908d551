"""Mutual proximity (Schnitzer et al., JMLR 2012), empirical and Gaussian, with a query bank."""

from __future__ import annotations

import numpy as np
import torch

from nnn.methods._neighbourhoods import BankNeighbourhoodMethod, distance
from nnn.methods.grids import MP_K_GRID

VARIANTS = ("gaussian", "empirical")
#: standard deviations below this (a neighbourhood of identical distances) are raised to it
MIN_STD = 1e-6


class MutualProximity(BankNeighbourhoodMethod):
    """Mutual proximity of a query q and a gallery item r.

    Original definition (Schnitzer, Flexer, Schedl & Widmer, "Local and global scaling reduce
    hubs in space", JMLR 13, 2012): with X the distance from x to a random object and Y that
    from y, MP(d_xy) = P(X > d_xy and Y > d_xy); assuming X and Y independent, MP =
    P(X > d_xy) P(Y > d_xy), the distance distributions being either empirical
    (counts over the data) or Gaussian (per-object mean and standard deviation of its
    distances). Similarity: 1 - MP is the secondary distance.

    Adaptation to query -> gallery retrieval, with d = sqrt(2 - 2 s) (unit vectors) and the
    independent (product) form: the distribution of Y (gallery item r) is that of its distances
    to the query bank, the distribution of X (query q) that of its distances to the gallery.
    With ``k`` given, each is restricted to the item's k nearest (r: k nearest bank rows, one
    streamed pass; q: k nearest gallery items, per query block), as the k-NN-graph MP of
    scikit-hubness does; with ``k=None`` (Gaussian only) the whole bank / whole gallery is used,
    Schnitzer et al.'s definition (the bank's moments are summed in the same streamed pass).

        variant "gaussian":  score = log SF_q(d) + log SF_r(d) = log MP,  SF_x(d) =
                             Phi((mu_x - d) / sd_x)  (mean mu_x, population std sd_x >= MIN_STD;
                             log Phi via ``torch.special.log_ndtr``: no underflow, a total order)
        variant "empirical": score = MP = #{j <= k : d_j(q) > d} / k * #{j <= k : d_j(r) > d} / k,
                             d_j(x) the distances of x's k neighbours (strictly farther; counted
                             as s_j < s(q, r) on the similarities). Pairs outside a side's
                             neighbourhood score 0 and tie (ties count against a query in R@k).

    Empirical MP over a whole bank would need every item's sorted n_b distances at score time
    (11.8 GB at COCO scale), so it needs a finite ``k``; the Gaussian form needs only two sums per
    item. Fitted: ``mean_``, ``std_`` (n_g,) float32 (Gaussian) or ``sorted_sims_`` (n_g, k)
    float32 ascending (empirical); ``with_params(k=)`` for any k <= ``k_max_`` reuses the table.
    """

    option, paper_name = "mp", "MP"
    tuning_grid = {"ks": MP_K_GRID}
    _min_k = 2

    def __init__(self, *, k: int | None = None, variant: str = "gaussian",
                 k_max: int | None = None, memory_budget_mb: float = 256.0,
                 progress: bool = True, batch_size: int = 4096, device: str = "cpu",
                 normalize: bool = False):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if k is None and variant == "empirical":
            raise ValueError("variant='empirical' needs a neighbourhood size k (e.g. k=64): the "
                             "empirical distribution over a whole bank is too large to keep; "
                             "k=None (all rows) is available for variant='gaussian'")
        super().__init__(k=k, k_max=k_max, memory_budget_mb=memory_budget_mb, progress=progress,
                         batch_size=batch_size, device=device, normalize=normalize)
        self.variant = variant
        self._needs_moments = variant == "gaussian" and k is None

    def _set_k(self, k: int | None) -> None:
        nb = self.neighbourhoods_
        if self.variant == "empirical":
            self.sorted_sims_ = np.ascontiguousarray(nb.sims[:, :k][:, ::-1])
            self._sorted_t = self._to_device(self.sorted_sims_)
            return
        if k is None:
            mean, var = nb.dist_mean, nb.dist_var
        else:
            dist = distance(torch.from_numpy(nb.sims[:, :k]).double()).numpy()
            mean, var = dist.mean(axis=1), dist.var(axis=1)
        self.mean_ = mean.astype(np.float32)
        self.std_ = np.maximum(np.sqrt(var), MIN_STD).astype(np.float32)
        self._mean_t, self._std_t = self._to_device(self.mean_), self._to_device(self.std_)

    def _set_params(self, params: dict) -> None:
        """``with_params(k=)``; a k=None fit (whole-bank moments, a table of width 1) takes no
        other k."""
        if self.k is None and params.get("k") is not None:
            raise ValueError(f"k={params['k']} cannot come from a MutualProximity(k=None) fit "
                             "(whole-bank moments, no top-k table); fit with k_max >= "
                             f"{params['k']} to choose k afterwards")
        if self.k is not None:
            super()._set_params(params)

    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        s = q @ self._gallery_t.T                                          # (b, n_g)
        if self.variant == "empirical":
            return self._empirical(s)
        d = distance(s.clone())
        if self.k is None:
            dq = d
        else:
            dq = distance(torch.topk(s, self.k, dim=1, sorted=False).values)
        mean_q = dq.mean(dim=1, keepdim=True)
        std_q = dq.std(dim=1, correction=0, keepdim=True).clamp_(min=MIN_STD)
        log_sf = torch.special.log_ndtr
        return log_sf((mean_q - d) / std_q) + log_sf((self._mean_t - d) / self._std_t)

    def _empirical(self, s: torch.Tensor) -> torch.Tensor:
        k = self.k
        top = torch.topk(s, k, dim=1, sorted=False).values.sort(dim=1).values  # (b, k) ascending
        # #{j : s_j < s}, i.e. neighbours strictly farther than the pair, on both sides
        farther_q = torch.searchsorted(top, s)                              # (b, n_g)
        farther_r = torch.searchsorted(self._sorted_t, s.T.contiguous()).T  # (b, n_g)
        return (farther_q * farther_r).float() / (k * k)
