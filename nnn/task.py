"""One retrieval direction on one split (``RetrievalTask``) and the direction names.

``"t2i"``: gallery = images (n_img, d), queries = captions (n_cap, d), query bank = reference
captions, gallery bank = reference images; ``"i2t"``: gallery = captions, queries = images,
query bank = reference images, gallery bank = reference captions. Used by the pipeline, the
tuners (``nnn.tuning``) and the ablations (``nnn.ablations``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnn.data.base import EmbeddingSet

#: the retrieval directions: text->image and image->text
DIRECTIONS = ("t2i", "i2t")


@dataclass
class RetrievalTask:
    """One retrieval direction on one split: what to fit on and what to query with.

    gallery (n_g, d), queries (n_q, d), caption_to_image (n_cap,), query_bank (n_qb, d),
    gallery_bank (n_gb, d); ``direction`` is "t2i" or "i2t".
    """

    direction: str
    gallery: np.ndarray
    queries: np.ndarray
    caption_to_image: np.ndarray
    query_bank: np.ndarray
    gallery_bank: np.ndarray

    @classmethod
    def from_sets(cls, split: EmbeddingSet, refs: EmbeddingSet, direction: str) -> "RetrievalTask":
        """``split``'s gallery/queries and ``refs``' banks for ``direction`` (module docstring)."""
        direction = check_direction(direction)
        if split.dim != refs.dim:
            raise ValueError(f"split {split.name!r} has dimension {split.dim} but references "
                             f"{refs.name!r} have {refs.dim}; embed both with the same model")
        if direction == "t2i":
            return cls(direction, split.image, split.text, split.caption_to_image,
                       refs.text, refs.image)
        return cls(direction, split.text, split.image, split.caption_to_image,
                   refs.image, refs.text)

    def fit(self, method):
        """``method.fit`` on this task's gallery with both banks. Returns the fitted method."""
        return method.fit(self.gallery, query_bank=self.query_bank, gallery_bank=self.gallery_bank)

    def ranks(self, method, *, batch_size: int = 1024) -> np.ndarray:
        """1-based ranks (n_q,) of a method fitted on this task's gallery (``nnn.metrics``)."""
        from nnn.metrics import i2t_ranks, t2i_ranks  # torch: only where ranks are computed

        rank_fn = t2i_ranks if self.direction == "t2i" else i2t_ranks
        return rank_fn(method, self.queries, self.caption_to_image, batch_size=batch_size)

    def recall_at_1(self, method, *, batch_size: int = 1024) -> float:
        """R@1 in percent of a fitted method."""
        from nnn.metrics import recall_at_k

        return recall_at_k(self.ranks(method, batch_size=batch_size), (1,))["R@1"]


def check_direction(direction: str) -> str:
    """Return ``direction`` if it is "t2i" or "i2t", else raise ``ValueError``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS} (text->image or image->text), "
                         f"got {direction!r}")
    return direction
