"""DN, distribution normalisation (Zhou et al., 2023): centre each side by a reference mean."""

from __future__ import annotations

import math

import numpy as np
import torch

from nnn._arrays import as_tensor
from nnn.methods.base import RetrievalMethod
from nnn.methods.grids import DN_LAMBDA_GRID


class DN(RetrievalMethod):
    """Score ``(q - lam * mu_q) . (r - lam * mu_g)``.

    ``mu_q`` = ``query_mean_`` (d,) is the mean of the query bank (reference embeddings of the
    *query* modality, e.g. training captions for text->image) and is subtracted from the queries;
    ``mu_g`` = ``gallery_mean_`` (d,) is the mean of the gallery bank (reference embeddings of the
    *gallery* modality, e.g. training images) and is subtracted from the gallery. Each side is
    centred by its own modality's mean; rows are not re-normalised afterwards.

    ``lam`` may be any finite number (the paper uses 0.5; 0 is the plain dot product; a negative
    value moves each side away from its mean instead of towards it).

    Expanding, the score is ``s(q, r) - lam mu_q.r - lam q.mu_g + lam^2 mu_q.mu_g``: per query
    only ``-lam mu_q.r`` changes the ranking, so rankings depend on the query bank alone; the
    gallery bank is still required so that ``score`` returns the DN score itself.
    Inputs are never modified (the centred gallery is a new array).
    """

    requires = ("query_bank", "gallery_bank")
    option, paper_name = "dn", "DN"
    tuned_params = ("lam",)
    tuning_grid = {"lams": DN_LAMBDA_GRID}

    def __init__(self, *, lam: float = 0.5, batch_size: int = 4096, device: str = "cpu",
                 normalize: bool = False):
        super().__init__(batch_size=batch_size, device=device, normalize=normalize)
        try:
            self.lam = float(lam)
        except (TypeError, ValueError):
            raise ValueError(f"lam must be a number, got {lam!r}") from None
        if not math.isfinite(self.lam):
            raise ValueError(f"lam must be finite, got {lam!r}; the paper uses lam=0.5")

    def _fit(self, gallery, query_bank, gallery_bank):
        self.query_mean_ = query_bank.mean(axis=0, dtype=np.float64)
        self.gallery_mean_ = gallery_bank.mean(axis=0, dtype=np.float64)
        centred = gallery - (self.lam * self.gallery_mean_).astype(np.float32)
        self._centred_gallery_t = as_tensor(centred).to(self.device_)
        self._query_shift_t = as_tensor(
            (self.lam * self.query_mean_).astype(np.float32)).to(self.device_)

    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        return (q - self._query_shift_t) @ self._centred_gallery_t.T
