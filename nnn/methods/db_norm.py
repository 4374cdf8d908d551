"""DBNorm (Wang et al., 2023): dual inverted softmax over a query bank and a gallery bank.

Implemented from the equations, not from the public DBNorm code (which swaps beta1/beta2 and has
bugs); the betas are named by the bank they scale.
"""

from __future__ import annotations

import torch

from nnn._arrays import check_non_negative, check_positive_int
from nnn.methods._bank_stats import bank_stats, check_memory_budget, top1_in
from nnn.methods.base import RetrievalMethod

_BANKS = ("query_bank", "gallery_bank")


class DBNorm(RetrievalMethod):
    """DualIS: the product of two inverted softmaxes,

        exp(bq s(q,r)) / sum_{q' in B_q} exp(bq s(q',r))
          * exp(bg s(q,r)) / sum_{g' in B_g} exp(bg s(g',r)),

    with bq = ``beta_query`` over the query bank B_q and bg = ``beta_gallery`` over the gallery
    bank B_g. ``score`` returns its log,
    ``(bq + bg) s(q, r) - log_norm_query_[r] - log_norm_gallery_[r]``. The gallery-bank sum
    compares items of the gallery's own modality (e.g. training images with test images), whose
    similarities are larger, so useful ``beta_gallery`` values differ from ``beta_query``'s.

    DualDIS (``dynamic=True``) gates each factor on its own: a factor is normalised for a query
    only if the query's top-1 gallery item (raw s) lies in that bank's activation set (gallery
    items in the top-``activation_k`` of some row of that bank); otherwise the factor stays the
    un-normalised exp(beta s(q, r)) and contributes beta s(q, r) to the log-score. Rows can thus
    be on different scales; rank per query only.

    A factor with beta 0 is a constant (1 / bank size) and is dropped: its bank may be omitted
    (ignored if given) and its fitted attributes are ``None``. So ``beta_gallery=0`` is QB-Norm
    and needs no gallery bank. Both betas 0 would make every score constant: ``ValueError``.

    Banks are streamed in chunks sized by ``memory_budget_mb``. Fitted: ``log_norm_query_``,
    ``log_norm_gallery_`` (n_g,) float64 and ``activation_query_``, ``activation_gallery_``
    (n_g,) bool (or ``None`` for a dropped factor).
    """

    def __init__(self, *, beta_query: float, beta_gallery: float, dynamic: bool = False,
                 activation_k: int = 1, memory_budget_mb: float = 256.0, progress: bool = True,
                 batch_size: int = 4096, device: str = "cpu", normalize: bool = False):
        super().__init__(batch_size=batch_size, device=device, normalize=normalize)
        self.beta_query = check_non_negative(beta_query, "beta_query")
        self.beta_gallery = check_non_negative(beta_gallery, "beta_gallery")
        if self.beta_query == 0 and self.beta_gallery == 0:
            raise ValueError("beta_query=0 and beta_gallery=0 make every DBNorm score the same "
                             "constant; set at least one beta > 0 (Identity ranks by raw "
                             "similarity)")
        self.dynamic = bool(dynamic)
        self.activation_k = check_positive_int(activation_k, "activation_k")
        self.memory_budget_mb = check_memory_budget(memory_budget_mb)
        self.progress = bool(progress)

    @property
    def requires(self) -> tuple[str, ...]:
        """The banks of the factors whose beta is > 0."""
        return tuple(name for name, beta in zip(_BANKS, (self.beta_query, self.beta_gallery))
                     if beta > 0)

    def _fit(self, gallery, query_bank, gallery_bank):
        check_positive_int(self.activation_k, "activation_k", upper=len(gallery),
                           upper_name="the gallery size")
        self._factors = []  # (log_norm (n_g,) float32, activation (n_g,) bool) on device_
        for side, beta, bank in (("query", self.beta_query, query_bank),
                                 ("gallery", self.beta_gallery, gallery_bank)):
            log_norm = activation = None
            if beta > 0:
                log_norm, activation = bank_stats(
                    bank, self._gallery_t, beta=beta, activation_k=self.activation_k,
                    memory_budget_mb=self.memory_budget_mb, desc=f"DBNorm {side} bank",
                    progress=self.progress)
                self._factors.append((torch.from_numpy(log_norm).float().to(self.device_),
                                      torch.from_numpy(activation).to(self.device_)))
            setattr(self, f"log_norm_{side}_", log_norm)
            setattr(self, f"activation_{side}_", activation)

    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        s = q @ self._gallery_t.T
        out = (self.beta_query + self.beta_gallery) * s
        for log_norm, activation in self._factors:
            if self.dynamic:
                out -= top1_in(s, activation)[:, None] * log_norm
            else:
                out -= log_norm
        return out
