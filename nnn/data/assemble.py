"""The run's three sets from datasets: the evaluation split, the reference set, the tuning part.

Plain values in, no config (``nnn.pipeline`` reads the config and calls these):

1. ``load_splits``: the evaluation split and the training split (``source``) of the evaluation
   dataset, and the training split of the reference dataset when the references come from
   another one (out-of-distribution references, e.g. COCO captions for Flickr30k). A split is an
   ``EmbeddingSet`` (embedding-level datasets: synthetic, precomputed) or a ``RetrievalSplit``
   (raw images and captions, embedded later by ``encode``).
2. ``tuning_size``: how many images the tuning part gets (``reference.tuning_size``).
3. ``draw_sets``: the seeded draw of the paper's protocol (``nnn.data.splits``): inside the
   training split, a reference part of ``fraction`` of its images and a disjoint tuning part.
   With another reference dataset the references are drawn from it and the tuning part from the
   evaluation dataset's training split (the same images either way), so hyper-parameters are
   chosen for the evaluation distribution, as in the paper. Raw references that share an image
   file with the evaluation split or the tuning part (the evaluation data under another config
   name) are refused, as is a tuning part the source would draw from the evaluation split. Raw
   splits are embedded through the ``encode`` callback, only the evaluation split and the drawn
   images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# ``tuning_size=TUNING_AUTO``: the paper's protocol when a tuning part is needed, else none
from nnn.config_dir import TUNING_AUTO
from nnn.data.base import EmbeddingSet, RetrievalSplit
from nnn.data.splits import reference_and_tuning_sets, reference_and_tuning_split

log = logging.getLogger(__name__)

Split = EmbeddingSet | RetrievalSplit
#: {key: (raw dataset, split name, image rows or None for all, subset description or None)}
#: -> {key: EmbeddingSet}: embeds raw splits (through the embedding cache)
Encode = Callable[[Mapping[str, tuple[Any, str, Any, Any]]], dict[str, EmbeddingSet]]


@dataclass(frozen=True)
class Splits:
    """What ``load_splits`` read: the datasets and their splits.

    ``ref_dataset`` / ``ref_source`` are the evaluation dataset / its ``source`` split when the
    references come from the evaluation dataset (``in_distribution``).
    """

    dataset: Any
    test: Split
    source: Split
    source_name: str
    eval_split: str
    ref_dataset: Any
    ref_source: Split
    in_distribution: bool


def n_images(split: Split) -> int:
    """The number of images of an ``EmbeddingSet`` or a ``RetrievalSplit``."""
    return len(split.image) if isinstance(split, EmbeddingSet) else split.n_images


def dataset_splits(dataset, names: Mapping[str, str]) -> dict[str, Split]:
    """{key: split} for {key: split name} of one dataset (an embedding-level dataset generates or
    reads all its splits at once, ``dataset.splits()``; a raw one reads ``dataset.split(name)``)."""
    if not hasattr(dataset, "splits"):
        return {key: dataset.split(name) for key, name in names.items()}
    sets = dataset.splits()
    missing = sorted({n for n in names.values() if n not in sets})
    if missing:
        raise ValueError(f"dataset {type(dataset).__name__} has splits {sorted(sets)}, "
                         f"not {missing}; set eval.split / reference.source to one of them")
    return {key: sets[name] for key, name in names.items()}


def load_splits(dataset, *, eval_split: str, source: str, ref_dataset=None) -> Splits:
    """The evaluation split ``eval_split`` and training split ``source`` of ``dataset``, and
    ``source`` of ``ref_dataset`` (None: the references come from ``dataset``)."""
    if ref_dataset is None and source == eval_split:
        raise ValueError(f"reference.source={source!r} is the evaluation split (eval.split); "
                         "references and the tuning part must come from another split, e.g. "
                         "reference.source=train")
    got = dataset_splits(dataset, {"test": eval_split, "source": source})
    ref_source = got["source"]
    if ref_dataset is not None:
        ref_source = dataset_splits(ref_dataset, {"source": source})["source"]
    if isinstance(got["test"], EmbeddingSet) != isinstance(ref_source, EmbeddingSet):
        other = ref_dataset if ref_dataset is not None else dataset
        raise ValueError(f"the evaluation dataset {type(dataset).__name__} and the reference "
                         f"dataset {type(other).__name__} must both hold embeddings "
                         "(model=none) or both raw images and captions (embedded by one model)")
    if ref_dataset is not None:
        _refuse_shared_images(ref_source, range(n_images(ref_source)), got["test"],
                              range(n_images(got["test"])),
                              f"reference.dataset's {source!r} split",
                              f"the evaluation split {eval_split!r}", "test items")
    return Splits(dataset, got["test"], got["source"], source, eval_split,
                  dataset if ref_dataset is None else ref_dataset, ref_source,
                  ref_dataset is None)


def _files(split: RetrievalSplit, rows) -> set[str]:
    """The normalised absolute paths of the images at ``rows``."""
    return {os.path.normpath(os.path.abspath(split.image_paths[r])) for r in rows}


def _refuse_shared_images(refs: Split, ref_rows, other: Split, other_rows, refs_name: str,
                          other_name: str, what: str) -> None:
    """ValueError when raw ``refs`` (its images at ``ref_rows``) and ``other`` (at
    ``other_rows``) share an image file: another reference dataset that is in fact the
    evaluation data (or a copy at the same paths) would put ``what`` into the references.
    Embedding-level splits carry no paths and are not checked."""
    if not isinstance(refs, RetrievalSplit) or not isinstance(other, RetrievalSplit):
        return
    shared = sorted(_files(refs, ref_rows) & _files(other, other_rows))
    if shared:
        raise ValueError(f"{refs_name} and {other_name} share {len(shared)} image files (e.g. "
                         f"{shared[0]}): the references would hold {what}; choose another "
                         "reference.dataset or reference.source, or drop reference.dataset to "
                         "draw the references from the evaluation dataset")


def tuning_size(size, n_test_images: int, n_source_images: int, fraction: float, *,
                auto: bool) -> tuple[int, str]:
    """(images, how they were chosen) for ``reference.tuning_size``: an image count, "test" for
    the test split's size, or "auto": when ``auto`` (tuning requested, or a selecting sweeper)
    the paper's protocol, as many as the test split but at most what the references
    (``fraction`` of the ``n_source_images``) leave, else none."""
    if size == TUNING_AUTO:
        if not auto:
            return 0, "none"
        room = n_source_images - int(round(fraction * n_source_images))
        if room < 1:
            raise ValueError(f"no images are left for a tuning part: the references take "
                             f"reference.fraction={fraction} of the {n_source_images} training "
                             "images; lower reference.fraction or set reference.tuning_size")
        if room < n_test_images:
            note = (f"{room} images (auto: the test split's {n_test_images} do not fit beside "
                    f"the references, reference.fraction={fraction} of {n_source_images})")
            log.warning("tuning part shrunk to %s", note)
            return room, note
        return n_test_images, f"{n_test_images} images (auto: as many as the test split)"
    if size == "test":
        return n_test_images, f"{n_test_images} images (reference.tuning_size=test)"
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"reference.tuning_size must be an integer >= 0, 'test' or "
                         f"'{TUNING_AUTO}', got {size!r}")
    return size, f"{size} images (reference.tuning_size={size})" if size else "none"


def draw_sets(splits: Splits, *, fraction: float, seed: int, n_tuning: int,
              encode: Encode | None) -> tuple[EmbeddingSet, EmbeddingSet, EmbeddingSet | None]:
    """(evaluation split, reference set, tuning part or None) as ``EmbeddingSet``s.

    The reference set is ``fraction`` of the reference dataset's training images, the tuning part
    ``n_tuning`` images of the evaluation dataset's, disjoint from the references when both come
    from the same split (one seeded draw, ``seed``). ``encode`` embeds raw splits; it must be
    None for embedding-level splits (and given for raw ones).
    """
    s = splits
    if n_tuning and s.source_name == s.eval_split:  # only with another reference dataset
        raise ValueError(f"the tuning part is drawn from the evaluation dataset's "
                         f"reference.source={s.source_name!r} split, which is the evaluation "
                         "split (eval.split): it would hold test items; use another "
                         "reference.source (e.g. train) or reference.tuning_size=0")
    # in-distribution: one seeded draw gives disjoint reference and tuning parts; otherwise the
    # references are drawn from the other dataset and the tuning part as in-distribution
    n_ref_tuning = n_tuning if s.in_distribution else 0
    if isinstance(s.test, EmbeddingSet):
        if encode is not None:
            raise ValueError(f"dataset {type(s.dataset).__name__} already holds embeddings; use "
                             "model=none with it, or a raw-image dataset (coco, flickr30k) with "
                             "an encoder")
        reference, tuning = reference_and_tuning_sets(s.ref_source, fraction=fraction,
                                                      tuning_size=n_ref_tuning, seed=seed)
        if not s.in_distribution and n_tuning:
            _, tuning = reference_and_tuning_sets(s.source, fraction=fraction,
                                                  tuning_size=n_tuning, seed=seed)
        return s.test, reference, tuning
    if encode is None:
        raise ValueError(f"dataset {type(s.dataset).__name__} holds raw images and captions; "
                         "choose an encoder to embed them, e.g. model=clip")
    return _embed_parts(s, fraction=fraction, seed=seed, n_tuning=n_tuning,
                        n_ref_tuning=n_ref_tuning, encode=encode)


def _embed_parts(s: Splits, *, fraction: float, seed: int, n_tuning: int, n_ref_tuning: int,
                 encode: Encode) -> tuple[EmbeddingSet, EmbeddingSet, EmbeddingSet | None]:
    """``draw_sets`` for raw splits: the drawn image rows, then one ``encode`` call."""
    ref_rows, tune_rows = reference_and_tuning_split(n_images(s.ref_source), fraction=fraction,
                                                     tuning_size=n_ref_tuning, seed=seed)
    if not s.in_distribution and n_tuning:
        _, tune_rows = reference_and_tuning_split(n_images(s.source), fraction=fraction,
                                                  tuning_size=n_tuning, seed=seed)
        _refuse_shared_images(s.ref_source, ref_rows, s.source, tune_rows,
                              "the references drawn from reference.dataset",
                              "the tuning part", "tuning items")
    subset = {"fraction": fraction, "seed": seed}
    parts = {"test": (s.dataset, s.eval_split, None, None),
             "reference": (s.ref_dataset, s.source_name, ref_rows,
                           {"part": "reference", "tuning_size": n_ref_tuning, **subset})}
    if len(tune_rows):
        parts["tuning"] = (s.dataset, s.source_name, tune_rows,
                           {"part": "tuning", "tuning_size": n_tuning, **subset})
    sets = encode(parts)
    return sets["test"], sets["reference"], sets.get("tuning")
