"""DBNorm (Wang et al., 2023): dual inverted softmax over a query bank and a gallery bank.

Implemented from the equations, not from the public DBNorm code (which swaps beta1/beta2 and has
bugs); the betas are named by the bank they scale.
"""

from __future__ import annotations

import numpy as np
import torch

from nnn._arrays import as_tensor, check_non_negative, check_positive_int
from nnn.methods._bank_stats import (bank_stats, check_beta_grid, check_memory_budget,
                                     gate_groups)
from nnn.methods.base import RetrievalMethod
from nnn.methods.grids import DB_NORM_STAGES

_SIDES = ("query", "gallery")
#: what a gated-off DualDIS factor becomes: the raw similarity (paper) or exp(beta s)
GATES = ("raw", "exp")


class DBNorm(RetrievalMethod):
    """DualIS: the product of two inverted softmaxes,

        F_q(q, r) * F_g(q, r),   F_x(q, r) = exp(b_x s(q,r)) / sum_{x' in B_x} exp(b_x s(x',r)),

    with b_q = ``beta_query`` over the query bank B_q and b_g = ``beta_gallery`` over the gallery
    bank B_g. ``score`` returns a value that ranks each query's row like the product: for DualIS
    its log up to a constant, ``(b_q + b_g) s(q, r) - lm_q[r] - lm_g[r]`` with
    ``lm_x = log mean_{x' in B_x} exp(b_x s(x', r))`` (the log-normaliser minus log |B_x|, which
    is the same for every r; ``BankStats.log_mean``: it keeps small betas exact). The gallery-bank
    sum compares items of the gallery's own modality (e.g. training images with test images),
    whose similarities are larger, so useful ``beta_gallery`` values differ from ``beta_query``'s.

    DualDIS (``dynamic=True``) gates each factor on its own: factor x is normalised for a query
    only if the query's top-1 gallery item (raw s) lies in bank x's activation set A_x (gallery
    items in the top-``activation_k`` of some row of bank x, ties with its k-th included). A
    gated-off factor is, by ``gate``:

    - ``"raw"`` (default; the paper and the DBNorm reference): the raw similarity s(q, r), as
      DIS keeps s(q, r). The row then ranks by the product of its factors,
      ``P(q, r) = s(q, r)^n_off * exp(x(q, r))``, ``x = sum_{on factors} (b s(q, r) - lm[r])``,
      n_off = the number of gated-off factors (the gates depend on q only, so n_off is fixed
      along a row). With n_off = 0 the score is x; otherwise P may be <= 0 (s can be negative
      or 0) and exp(x) under- or overflows, so the row is scored in the sign-log domain:
      ``L = n_off log|s| + x`` and ``score = sign(P) * (L - min_row L + 1)`` (0 where P = 0;
      the minimum is over the row's P != 0, so a zero similarity costs no resolution),
      which orders the row exactly as P does (positive products above 0 above negative ones,
      by |P| within each sign). With both factors off, P = s^2: a large negative similarity
      ranks high, as in the paper's product (it needs s < 0, rare for CLIP-like models).
    - ``"exp"``: the un-normalised exp(b s(q, r)), i.e. the factor contributes b s(q, r) to the
      log-score ``(b_q + b_g) s - sum_{on factors} lm[r]``.

    Rows can thus be on different scales; rank per query only.

    A factor with beta 0 is a constant (1 / bank size) and is dropped, gated or not: its bank may
    be omitted (ignored if given) and its fitted attributes are ``None``. So ``beta_gallery=0`` is
    QB-Norm (with ``dynamic=True``: DIS, whatever ``gate``) and needs no gallery bank. Both betas
    0 would make every score constant: ``ValueError``.

    Each bank is streamed once, in chunks sized by ``memory_budget_mb``. That pass also computes
    the normalisers of the betas in ``beta_query_grid`` / ``beta_gallery_grid`` (betas > 0), so
    ``with_params`` with any of them is a fitted copy without another pass (a grid search costs
    one pass per bank); a bank is needed if its beta or any beta of its grid is > 0. Fitted:
    ``query_stats_``, ``gallery_stats_`` (``BankStats``), ``log_norm_query_``,
    ``log_norm_gallery_`` (n_g,) float64 (``log sum_{x'} exp(b s(x', r))``) and
    ``activation_query_``, ``activation_gallery_`` (n_g,) bool (or ``None`` for a dropped factor
    / an unused bank).
    """

    option, paper_name, dynamic_paper_name = "db_norm", "DualIS", "DualDIS"
    tuned_params = ("beta_query", "beta_gallery")
    tuning_grid = {"stages": DB_NORM_STAGES}
    fit_grid_params = {"beta_query": "beta_query_grid", "beta_gallery": "beta_gallery_grid"}
    zero_is_identity = True

    def __init__(self, *, beta_query: float, beta_gallery: float, beta_query_grid=None,
                 beta_gallery_grid=None, dynamic: bool = False, gate: str = "raw",
                 activation_k: int = 1, memory_budget_mb: float = 256.0, progress: bool = True,
                 batch_size: int = 4096, device: str = "cpu", normalize: bool = False):
        super().__init__(batch_size=batch_size, device=device, normalize=normalize)
        self.beta_query, self.beta_gallery = self._check_betas(beta_query, beta_gallery)
        self.beta_query_grid = check_beta_grid(beta_query_grid, "beta_query_grid")
        self.beta_gallery_grid = check_beta_grid(beta_gallery_grid, "beta_gallery_grid")
        self.dynamic = bool(dynamic)
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES} (what a DualDIS factor is when the "
                             f"query's top-1 is outside its activation set), got {gate!r}")
        self.gate = gate
        self.activation_k = check_positive_int(activation_k, "activation_k")
        self.memory_budget_mb = check_memory_budget(memory_budget_mb)
        self.progress = bool(progress)

    @staticmethod
    def _check_betas(beta_query, beta_gallery) -> tuple[float, float]:
        betas = (check_non_negative(beta_query, "beta_query"),
                 check_non_negative(beta_gallery, "beta_gallery"))
        if betas == (0, 0):
            raise ValueError("beta_query=0 and beta_gallery=0 make every DBNorm score the same "
                             "constant; set at least one beta > 0 (Identity ranks by raw "
                             "similarity)")
        return betas

    def _side_betas(self, side: str) -> tuple[float, ...]:
        """The betas > 0 whose normalisers ``fit`` computes over ``side``'s bank."""
        beta = getattr(self, f"beta_{side}")
        return tuple(b for b in (beta, *getattr(self, f"beta_{side}_grid")) if b > 0)

    @property
    def requires(self) -> tuple[str, ...]:
        """The banks with a beta > 0 (the factor's or one of its grid)."""
        return tuple(f"{side}_bank" for side in _SIDES if self._side_betas(side))

    def _fit(self, gallery, query_bank, gallery_bank):
        check_positive_int(self.activation_k, "activation_k", upper=len(gallery),
                           upper_name="the gallery size")
        for side, bank in zip(_SIDES, (query_bank, gallery_bank)):
            betas = self._side_betas(side)
            stats = bank_stats(
                bank, self._gallery_t, betas=betas, activation_k=self.activation_k,
                memory_budget_mb=self.memory_budget_mb, desc=f"DBNorm {side} bank",
                progress=self.progress) if betas else None
            setattr(self, f"{side}_stats_", stats)
        # every fitted bank's activation set, whatever the current betas: the gate key
        self._bank_activations = [None if getattr(self, f"{side}_stats_") is None else
                                  as_tensor(getattr(self, f"{side}_stats_").activation).to(
                                      self.device_) for side in _SIDES]
        self._set_factors()

    def _set_factors(self) -> None:
        """Set ``log_norm_*_``, ``activation_*_`` and the scoring tensors for the current betas.

        Scoring tables, indexed by a row's gate pattern p (bit i set: factor i is normalised):
        ``_lm_table`` (2^n, n_g) float32, the sum of the normalised factors' log-means (summed
        in float64, then cast), ``_beta_on`` [2^n] their summed betas, ``_n_off`` [2^n] the
        number of gated-off factors; n = the number of factors with beta > 0, ``_present`` the
        sides (0 query, 1 gallery) of those factors, in order.
        """
        log_means, self._present = [], []
        for i, side in enumerate(_SIDES):
            beta, stats = getattr(self, f"beta_{side}"), getattr(self, f"{side}_stats_")
            log_norm = activation = None
            if beta > 0:
                if stats is None:
                    raise ValueError(f"beta_{side}={beta} needs the {side} bank, which was not "
                                     f"fitted; refit with beta_{side} > 0 or it in "
                                     f"beta_{side}_grid")
                log_norm, activation = stats.log_norm(beta, f"beta_{side}"), stats.activation
                log_means.append((beta, stats.log_mean(beta, f"beta_{side}")))
                self._present.append(i)
            setattr(self, f"log_norm_{side}_", log_norm)
            setattr(self, f"activation_{side}_", activation)
        patterns = range(2 ** len(log_means))
        on = [[i for i in range(len(log_means)) if p >> i & 1] for p in patterns]
        self._lm_table = torch.from_numpy(np.stack([
            sum((log_means[i][1] for i in idx), np.zeros(len(self.gallery_))) for idx in on
        ])).float().to(self.device_)
        self._beta_on = [sum(log_means[i][0] for i in idx) for idx in on]
        self._n_off = [len(log_means) - len(idx) for idx in on]

    def _set_params(self, params: dict) -> None:
        """``with_params(beta_query=, beta_gallery=)``: other betas (each 0, the fitted one or
        one of its grid), from the stored statistics."""
        self.beta_query, self.beta_gallery = self._check_betas(
            params.get("beta_query", self.beta_query),
            params.get("beta_gallery", self.beta_gallery))
        self._set_factors()

    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        s = q @ self._gallery_t.T
        return self._score_sims(s, s.argmax(dim=1))

    def _gate_key(self, top1: torch.Tensor) -> torch.Tensor | None:
        """(b,) long from each query's top-1 gallery id ``top1`` (b,): bit 0 set when it lies
        in the query bank's activation set, bit 1 in the gallery bank's (each bank that was
        fitted, whatever the current betas: one key serves every ``with_params`` copy); None
        without gates (``dynamic=False``)."""
        if not self.dynamic:
            return None
        key = torch.zeros_like(top1)
        for i, activation in enumerate(self._bank_activations):
            if activation is not None:
                key |= activation[top1].long() << i
        return key

    def _sims_context(self, s: torch.Tensor, top1: torch.Tensor) -> dict:
        """What every (beta_query, beta_gallery)'s scores of one block share, read-only once
        made (``nnn.tuning`` scores a block at every grid point from one, on several threads):
        ``groups``, the rows of each gate key; ``rows``, key -> the rows of a group that is not
        a slice (copied once); ``log``, (key, n_off) -> ``_sign_log_terms`` of a group's rows
        for every n_off its gated-off fitted factors allow (raw gate)."""
        context = {"groups": gate_groups(self._gate_key(top1)), "rows": {}, "log": {}}
        fitted = [i for i, a in enumerate(self._bank_activations) if a is not None]
        for key, rows in context["groups"]:
            sub = s[rows]
            if not isinstance(rows, slice):
                context["rows"][key] = sub
            if self.dynamic and self.gate == "raw":
                for n_off in range(1, sum(not key >> i & 1 for i in fitted) + 1):
                    context["log"][key, n_off] = self._sign_log_terms(sub, n_off)
        return context

    def _score_sims(self, s: torch.Tensor, top1: torch.Tensor, out: torch.Tensor | None = None,
                    context: dict | None = None) -> torch.Tensor:
        """Scores (b, n_g) from the raw similarities s (b, n_g) of a query block and each
        query's top-1 gallery id ``top1`` (b,) (the gates); ``s`` is not modified. ``out``: a
        (b, n_g) float32 buffer to write them into (not ``s``); ``context``: this block's
        ``_sims_context`` (None: computed here). Each group of rows with one gate pattern is
        scored with that pattern's (n_g,) log-mean row, broadcast, not gathered per row."""
        out = torch.empty_like(s) if out is None else out
        beta = self.beta_query + self.beta_gallery
        if not self.dynamic:
            return torch.mul(s, beta, out=out).sub_(self._lm_table[-1])  # every factor normalised
        context = context or self._sims_context(s, top1)
        for key, rows in context["groups"]:
            pattern = sum((key >> side & 1) << i for i, side in enumerate(self._present))
            contiguous = isinstance(rows, slice)
            if contiguous:
                sub, dst = s[rows], out[rows]
            else:   # the group's rows, copied once per block
                sub = context["rows"][key]
                dst = torch.empty_like(sub)
            n_off = self._n_off[pattern]
            if self.gate == "exp" or n_off == 0:
                torch.mul(sub, beta, out=dst).sub_(self._lm_table[pattern])
            else:
                torch.mul(sub, self._beta_on[pattern], out=dst).sub_(self._lm_table[pattern])
                self._sign_log(dst, context["log"][key, n_off])
            if not contiguous:
                out[rows] = dst
        return out

    @staticmethod
    def _sign_log_terms(s: torch.Tensor, n_off: int) -> tuple:
        """``n_off log|s|``, ``sign(s)^n_off`` (n_off in {1, 2}) and the mask of s = 0 (None
        when the rows have none) of rows ``s``: |s| is clamped to the smallest normal float32
        so that log stays finite, and s = 0 still scores 0 through its sign."""
        log_abs, sign = s.abs().clamp_min(torch.finfo(s.dtype).tiny).log(), s.sign()
        zero = sign == 0
        zero = zero if bool(zero.any()) else None
        return (log_abs, sign, zero) if n_off == 1 else (log_abs.mul_(n_off), sign.mul_(sign),
                                                        zero)

    @staticmethod
    def _sign_log(x: torch.Tensor, terms: tuple) -> None:
        """Rows with gated-off factors, in place: ``x`` (rows, n_g), the summed normalised
        factors, becomes the sign-log score of P = s^n_off exp(x) (class docstring), from
        those rows' ``_sign_log_terms``. The row minimum leaves out P = 0 (log|s| clamped to
        about -87 there would set it and coarsen the row's float32 scores ~100x)."""
        log_abs, sign, zero = terms
        x.add_(log_abs)                                   # L = n_off log|s| + x
        if zero is None:
            low = x.amin(dim=1, keepdim=True)
        else:
            low = x.masked_fill(zero, torch.inf).amin(dim=1, keepdim=True)
            low.masked_fill_(low.isinf(), 0.0)            # a row of zeros scores 0 throughout
        x.sub_(low).add_(1).mul_(sign)
