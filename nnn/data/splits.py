"""Seeded, disjoint splits of the images of an embedding set (captions follow their images).

- ``reference_and_tuning_split``: the paper's protocol inside a *training* split: a tuning part
  of ``tuning_size`` images (the size of the test split; hyper-parameters are chosen on it) and a
  reference part of ``fraction`` of **all** the training images (20% in the paper's main tables),
  drawn from the images not used for tuning, so the two never overlap.
- ``train_test_split``: for data without a training split, ``train_fraction`` of the images
  become the training split (references, banks, tuning) and the rest the evaluation split.

Row arrays are sorted, so subsets keep the data's order.
"""

from __future__ import annotations

import math

import numpy as np

from nnn._arrays import check_positive_int
from nnn.data.base import EmbeddingSet


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int >= 0 (what ``np.random.default_rng`` takes), else ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {seed!r}")
    return int(seed)


def _check_fraction(fraction, name: str) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) \
            or not 0 < fraction <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], e.g. 0.2, got {fraction!r}")
    return float(fraction)


def _fraction_size(n: int, fraction: float, name: str) -> int:
    size = int(round(fraction * n))
    if size < 1:
        raise ValueError(f"{name}={fraction} of {n} images is less than one image; "
                         f"use a larger {name} or more images")
    return size


def _fit_advice(n_images: int, n_ref: int, tuning_size: int) -> str:
    """How to make a reference part of ``n_ref`` images and a tuning part of ``tuning_size`` fit
    into ``n_images``: a smaller tuning part, or, while the tuning part leaves an image, a
    fraction whose references fit beside it (rounded down, so that it does fit)."""
    smaller_tuning = f"lower tuning_size to at most {n_images - n_ref}"
    room = n_images - tuning_size
    if room < 1:  # the tuning part alone takes every image: no fraction helps
        return f"tuning_size must leave images for the references: {smaller_tuning}"
    digits = 2 - math.floor(math.log10(room / n_images))  # 3 significant digits
    fraction = math.floor(room / n_images * 10 ** digits) / 10 ** digits
    return f"lower fraction to at most {fraction:g} or {smaller_tuning}"


def _disjoint_rows(n_images: int, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Consecutive slices of one seeded permutation of range(n_images), each sorted."""
    perm = np.random.default_rng(seed).permutation(n_images)
    bounds = np.cumsum([0, *sizes])
    return [np.sort(perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def reference_and_tuning_split(n_images: int, *, fraction: float, tuning_size: int,
                               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint image rows (reference (n_ref,), tuning (tuning_size,)) int64 of a training split.

    n_ref = round(fraction * n_images); ``tuning_size`` may be 0 (no tuning part). Raises
    ``ValueError`` when the two parts do not fit into ``n_images``.
    """
    n_images = check_positive_int(n_images, "n_images")
    fraction = _check_fraction(fraction, "fraction")
    seed = check_seed(seed)
    if isinstance(tuning_size, bool) or not isinstance(tuning_size, (int, np.integer)) \
            or tuning_size < 0:
        raise ValueError(f"tuning_size must be an integer >= 0, got {tuning_size!r}")
    n_ref = _fraction_size(n_images, fraction, "fraction")
    if n_ref + tuning_size > n_images:
        raise ValueError(f"a reference part of fraction={fraction} ({n_ref} images) and a tuning "
                         f"part of tuning_size={tuning_size} images do not fit into "
                         f"{n_images} training images; {_fit_advice(n_images, n_ref, tuning_size)}")
    tuning, reference = _disjoint_rows(n_images, [int(tuning_size), n_ref], seed)
    return reference, tuning


def train_test_split(n_images: int, *, train_fraction: float,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint image rows (train, test) int64: round(train_fraction * n_images) train images.

    Both parts must be non-empty.
    """
    n_images = check_positive_int(n_images, "n_images")
    train_fraction = _check_fraction(train_fraction, "train_fraction")
    seed = check_seed(seed)
    n_train = _fraction_size(n_images, train_fraction, "train_fraction")
    if n_train >= n_images:
        raise ValueError(f"train_fraction={train_fraction} of {n_images} images leaves no "
                         "images for the test split; use a smaller train_fraction")
    train, test = _disjoint_rows(n_images, [n_train, n_images - n_train], seed)
    return train, test


def reference_and_tuning_sets(train: EmbeddingSet, *, fraction: float, tuning_size: int,
                              seed: int = 0) -> tuple[EmbeddingSet, EmbeddingSet | None]:
    """``reference_and_tuning_split`` applied to a training ``EmbeddingSet``.

    Returns (reference set, tuning set or None when ``tuning_size`` is 0), each image with all
    of its captions.
    """
    ref_rows, tune_rows = reference_and_tuning_split(len(train.image), fraction=fraction,
                                                     tuning_size=tuning_size, seed=seed)
    reference = train.subset_images(ref_rows, name=f"{train.name}/reference")
    tuning = train.subset_images(tune_rows, name=f"{train.name}/tuning") if len(tune_rows) else None
    return reference, tuning
