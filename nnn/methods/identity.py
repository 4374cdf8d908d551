"""Identity: the uncorrected similarity, the baseline every method is compared with."""

from __future__ import annotations

import torch

from nnn.methods.base import RetrievalMethod


class Identity(RetrievalMethod):
    """``score(q, r) = s(q, r) = q . r``; needs no banks (any given to ``fit`` are only checked).

    No hyper-parameters: ``tuned_params`` is empty, so there is nothing to tune."""

    option, paper_name = "none", "Orig"

    def _score_block(self, q: torch.Tensor) -> torch.Tensor:
        return q @ self._gallery_t.T
