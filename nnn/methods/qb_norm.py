"""QB-Norm (Bogolin et al., 2022): inverted softmax over a query bank, optionally dynamic (DIS)."""

from __future__ import annotations

import torch

from nnn._arrays import check_non_negative, check_positive_int
from nnn.methods._bank_stats import (bank_stats, check_beta_grid, check_memory_budget,
                                     gate_groups)
from nnn.methods.base import RetrievalMethod
from nnn.methods.grids import QB_NORM_BETA_GRID


class QBNorm(RetrievalMethod):
    """Inverted softmax over a query bank B_q (n_b, d):

        n(q, r) = exp(beta s(q, r)) / sum_{q' in B_q} exp(beta s(q', r)).

    ``score`` returns ``log n(q, r) + log n_b = beta s(q, r) - lm[r]``, with
    ``lm = log mean_{q' in B_q} exp(beta s(q', r)) = log_norm_query_ - log n_b``; it ranks like n
    (the constant log n_b is removed before the float32 cast so that small betas stay exact:
    ``BankStats.log_mean``). With ``dynamic=True`` (dynamic inverted softmax, DIS, as the paper
    defines it) only queries whose top-1 gallery item by raw s lies in the activation set
    (gallery items in the top-``activation_k`` of some bank query, ties with its k-th included)
    are normalised; the other rows keep the raw similarity s(q, r) (the same rule as
    ``DBNorm(gate="raw")`` with ``beta_gallery=0``). Rows can thus be on different scales;
    ranking is per query, so this is harmless, but do not compare scores across queries.

    The bank is streamed once, in chunks sized by ``memory_budget_mb`` (MiB of per-chunk
    temporaries); the bank x gallery matrix is never built. That pass also computes the
    normaliser of every beta in ``beta_grid`` (betas > 0), so ``with_params(beta=b)`` for any
    of them is a fitted copy without another pass (a beta search costs one pass). Fitted:
    ``query_stats_`` (``BankStats``), ``log_norm_query_`` (n_g,) float64 for ``beta``,
    ``activation_query_`` (n_g,) bool (always computed; used only when ``dynamic``).
    """

    requires = ("query_bank",)
    option, paper_name, dynamic_paper_name = "qb_norm", "QB-Norm", "DIS"
    tuned_params = ("beta",)
    tuning_grid = {"betas": QB_NORM_BETA_GRID}
    fit_grid_params = {"beta": "beta_grid"}
    zero_is_identity = True

    def __init__(self, *, beta: float = 20.0, beta_grid=None, dynamic: bool = False,
                 activation_k: int = 1, memory_budget_mb: float = 256.0, progress: bool = True,
                 batch_size: int = 4096, device: str = "cpu", normalize: bool = False):
        super().__init__(batch_size=batch_size, device=device, normalize=normalize)
        self.beta = self._check_beta(beta)
        self.beta_grid = check_beta_grid(beta_grid, "beta_grid")
        self.dynamic = bool(dynamic)
        self.activation_k = check_positive_int(activation_k, "activation_k")
        self.memory_budget_mb = check_memory_budget(memory_budget_mb)
        self.progress = bool(progress)

    @staticmethod
    def _check_beta(beta) -> float:
        beta = check_non_negative(beta, "beta")
        if beta == 0:
            raise ValueError("beta=0 makes every QBNorm score the same constant (-log n_bank); use "
                             "beta > 0 (the reference code's default is 20), or Identity for raw "
                             "similarities")
        return beta

    def _fit(self, gallery, query_bank, gallery_bank):
        check_positive_int(self.activation_k, "activation_k", upper=len(gallery),
                           upper_name="the gallery size")
        self.query_stats_ = bank_stats(
            query_bank, self._gallery_t, betas=(self.beta, *self.beta_grid),
            activation_k=self.activation_k, memory_budget_mb=self.memory_budget_mb,
            desc="QBNorm query bank", progress=self.progress)
        self.activation_query_ = self.query_stats_.activation
        self._activation_t = torch.from_numpy(self.activation_query_).to(self.device_)
        self._set_log_norm()

    def _set_log_norm(self) -> None:
        self.log_norm_query_ = self.query_stats_.log_norm(self.beta)
        self._log_mean_t = torch.from_numpy(self.query_stats_.log_mean(self.beta)).float().to(
            self.device_)

    def _set_params(self, params: dict) -> None:
        """``with_params(beta=)``: another beta (the fitted one or one of ``beta_grid``), from
        the stored statistics."""
        self.beta = self._check_beta(params.get("beta", self.beta))
        self._set_log_norm()

    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        s = q @ self._gallery_t.T
        return self._score_sims(s, s.argmax(dim=1))

    def _gate_key(self, top1: torch.Tensor) -> torch.Tensor | None:
        """(b,) long, 1 where a query's top-1 gallery id ``top1`` (b,) lies in the activation
        set (the DIS gate is on); None without gates (``dynamic=False``)."""
        return self._activation_t[top1].long() if self.dynamic else None

    def _sims_context(self, s: torch.Tensor, top1: torch.Tensor) -> dict:
        """What every beta's scores of one block share (the rows of each gate); a with_params
        copy may reuse it (``nnn.tuning`` scores a block at every grid point from one)."""
        return {"groups": gate_groups(self._gate_key(top1))}

    def _score_sims(self, s: torch.Tensor, top1: torch.Tensor, out: torch.Tensor | None = None,
                    context: dict | None = None) -> torch.Tensor:
        """Scores (b, n_g) from the raw similarities s (b, n_g) of a query block and each
        query's top-1 gallery id ``top1`` (b,) (the DIS gate); ``s`` is not modified. ``out``:
        a (b, n_g) float32 buffer to write them into (not ``s``); ``context``: this block's
        ``_sims_context`` (None: computed here)."""
        out = torch.empty_like(s) if out is None else out
        groups = (context or self._sims_context(s, top1))["groups"]
        for gated, rows in groups:
            normed = gated or not self.dynamic
            if isinstance(rows, slice):
                dst = out[rows]
                if normed:
                    torch.mul(s[rows], self.beta, out=dst).sub_(self._log_mean_t)
                else:
                    dst.copy_(s[rows])
            else:
                sub = s[rows]
                out[rows] = torch.mul(sub, self.beta).sub_(self._log_mean_t) if normed else sub
        return out
