"""The two shapes of data every part of the project passes around.

- ``RetrievalSplit``: raw images and captions of one split (what an encoder consumes).
- ``EmbeddingSet``: L2-normalised embeddings of one split (what methods and metrics consume).

In both, ``caption_to_image[j]`` is the row (in ``image_ids`` / ``image``) of the image that
caption ``j`` describes; an image may have several captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def check_image_rows(values, n_images: int, what: str) -> np.ndarray:
    """``values`` as a 1-D int64 array of image rows in [0, n_images); ``ValueError`` naming
    ``what`` otherwise. An empty array of any dtype is accepted."""
    idx = np.asarray(values)
    if idx.ndim != 1 or (len(idx) and idx.dtype.kind not in "iu"):
        raise ValueError(f"{what} must be a 1-D integer array, got shape {idx.shape} "
                         f"dtype {idx.dtype}")
    if len(idx) and (idx.min() < 0 or idx.max() >= n_images):  # before the cast: uint64 wraps
        raise ValueError(f"{what} holds indices in [{idx.min()}, {idx.max()}] but there are "
                         f"{n_images} images")
    return idx.astype(np.int64, copy=False)


def check_caption_index(caption_to_image: np.ndarray, n_images: int, where: str) -> np.ndarray:
    """Return ``caption_to_image`` as int64 after checking it points at existing images.

    Raises ``ValueError`` naming ``where`` when an index is out of range or an image has no
    caption (a misaligned index would silently corrupt every metric).
    """
    idx = check_image_rows(caption_to_image, n_images, f"{where}: caption_to_image")
    missing = np.setdiff1d(np.arange(n_images), idx)
    if len(missing):
        raise ValueError(f"{where}: {len(missing)} images have no caption (first rows "
                         f"{missing[:5].tolist()}); the caption->image index is misaligned")
    return idx


def subset_caption_index(caption_to_image: np.ndarray, n_images: int,
                         rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the images at ``rows`` (in that order) and all of their captions.

    Returns (rows (m,) int64, kept caption positions (k,) int64 in their original order,
    new caption_to_image (k,) int64 into ``rows``). ``ValueError`` on repeated or
    out-of-range rows.
    """
    rows = check_image_rows(rows, n_images, "rows")
    if len(np.unique(rows)) != len(rows):
        raise ValueError("rows contain repeated images; pass each image row once")
    new_of_old = np.full(n_images, -1, dtype=np.int64)
    new_of_old[rows] = np.arange(len(rows))
    keep = np.flatnonzero(new_of_old[caption_to_image] >= 0)
    return rows, keep, new_of_old[caption_to_image[keep]]


@dataclass
class RetrievalSplit:
    """Raw data of one split.

    image_paths: n_img files; image_ids: n_img stable ids (e.g. COCO ids);
    captions: n_cap strings; caption_to_image: (n_cap,) int64 rows into the image lists.
    """

    name: str
    image_ids: list[str]
    image_paths: list[Path]
    captions: list[str]
    caption_to_image: np.ndarray

    def __post_init__(self):
        if len(self.image_ids) != len(self.image_paths):
            raise ValueError(f"split {self.name!r}: {len(self.image_ids)} image ids but "
                             f"{len(self.image_paths)} image paths")
        if len(self.captions) != len(self.caption_to_image):
            raise ValueError(f"split {self.name!r}: {len(self.captions)} captions but "
                             f"{len(self.caption_to_image)} entries in caption_to_image")
        self.caption_to_image = check_caption_index(self.caption_to_image, len(self.image_ids),
                                                    f"split {self.name!r}")

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def subset_images(self, rows, name: str | None = None) -> "RetrievalSplit":
        """The images at ``rows`` (in that order) with all of their captions, re-indexed."""
        rows, keep, c2i = subset_caption_index(self.caption_to_image, self.n_images, rows)
        return RetrievalSplit(name or self.name, [self.image_ids[r] for r in rows],
                              [self.image_paths[r] for r in rows],
                              [self.captions[j] for j in keep], c2i)


@dataclass
class EmbeddingSet:
    """Embeddings of one split: image (n_img, d) and text (n_cap, d) float32, L2-normalised."""

    name: str
    image: np.ndarray
    text: np.ndarray
    caption_to_image: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.image.ndim != 2 or self.text.ndim != 2 or self.image.shape[1] != self.text.shape[1]:
            raise ValueError(f"split {self.name!r}: image embeddings {self.image.shape} and text "
                             f"embeddings {self.text.shape} must be 2-D with the same dimension")
        if len(self.caption_to_image) != len(self.text):
            raise ValueError(f"split {self.name!r}: {len(self.text)} text embeddings but "
                             f"{len(self.caption_to_image)} entries in caption_to_image")
        self.caption_to_image = check_caption_index(self.caption_to_image, len(self.image),
                                                    f"split {self.name!r}")

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])

    def subset_images(self, rows: np.ndarray, name: str | None = None) -> "EmbeddingSet":
        """The images at ``rows`` (in that order) with all of their captions, re-indexed."""
        rows, keep, c2i = subset_caption_index(self.caption_to_image, len(self.image), rows)
        return EmbeddingSet(name or self.name, self.image[rows], self.text[keep], c2i,
                            dict(self.meta))
