"""Gender bias of occupation retrieval before and after NNN (paper §3.3, VisoGender).

Setup (paper): CLIP embeds the VisoGender single-person images (23 occupations x 10 images, 5
perceived men and 5 perceived women each) and one gender-neutral caption per occupation, "The
<occupation> and their <object>". Each caption retrieves from the pool of **all** images; NNN
biases the images with COCO training captions as references (k = 16, alpha = 0.75).

Metrics, per caption c over its ranked images (scores descending; equal scores keep the lower
image row first, so the ranking is deterministic):

- Bias@n(c) = (#masculine - #feminine) / n among the top n images; ``Bias@n`` is its mean over
  captions (signed, as in the paper: 0.348 -> 0.072 at n = 6, 0.270 -> 0.078 at n = 10), and
  ``AbsBias@n`` the mean of |Bias@n(c)| (a bias that cancels across occupations stays visible).
- P@k(c) = percent of the top k images whose occupation is c's occupation; ``P@k`` is the mean
  (the paper's "occupation precision at Retrieval@k": 56.5% -> 69.6% at k = 1, 49.6% -> 56.5%
  at k = 5).

``pool="occupation"`` instead ranks each caption only among its own occupation's images (the
VisoGender benchmark's retrieval protocol); precision is then trivially 100% and not reported.

Everything takes embeddings, so it runs offline; ``run_gender_bias_study`` is the thin wrapper
that embeds a ``VisoGenderSet`` with an ``Encoder`` first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from nnn._arrays import as_matrix, check_positive_int
from nnn.data.visogender import MASCULINE, VisoGenderSet, normalize_gender
from nnn.methods import NNN, Identity

log = logging.getLogger(__name__)

#: the paper's NNN setting for this study (§3.3): COCO captions as references, k = 16, alpha = 0.75
PAPER_K = 16
PAPER_ALPHA = 0.75
BIAS_NS = (6, 10)
PRECISION_KS = (1, 5)
POOLS = ("all", "occupation")
#: the paper's numbers (CLIP), for reports: {metric: (original, NNN)}; precision in percent
PAPER_RESULTS = {"Bias@6": (0.348, 0.072), "Bias@10": (0.270, 0.078),
                 "P@1": (56.5, 69.6), "P@5": (49.6, 56.5)}


def gender_signs(genders: Sequence[str]) -> np.ndarray:
    """(n,) int64: +1 for masculine, -1 for feminine labels (any alias ``normalize_gender`` knows)."""
    return np.array([1 if normalize_gender(g, f"gender {i}: ") == MASCULINE else -1
                     for i, g in enumerate(genders)], dtype=np.int64)


def rank_images(scores: np.ndarray, top: int) -> np.ndarray:
    """(n_c, n_img) scores -> (n_c, top) int64 image rows, best first; ties: lower row first."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")
    return order[:, :top]


def bias_at_n(ranked_signs: np.ndarray, n: int) -> np.ndarray:
    """(n_c, >= n) signs (+1 man, -1 woman) of ranked images -> (n_c,) (#men - #women) / n."""
    ranked_signs = np.asarray(ranked_signs)
    n = check_positive_int(n, "n", upper=ranked_signs.shape[1], upper_name="the ranked list length")
    return ranked_signs[:, :n].sum(axis=1) / n


def occupation_precision(ranked_occupations: np.ndarray, caption_occupations: np.ndarray,
                         k: int) -> np.ndarray:
    """(n_c, >= k) occupations of ranked images, (n_c,) caption occupations -> (n_c,) percent
    of the top k images showing the caption's occupation."""
    ranked_occupations = np.asarray(ranked_occupations)
    k = check_positive_int(k, "k", upper=ranked_occupations.shape[1],
                           upper_name="the ranked list length")
    hits = ranked_occupations[:, :k] == np.asarray(caption_occupations)[:, None]
    return hits.mean(axis=1) * 100.0


def _check_labels(scores, image_genders, image_occupations, caption_occupations):
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"scores must be a non-empty (n_captions, n_images) array, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; check the method's inputs")
    n_c, n_img = s.shape
    signs = gender_signs(image_genders)
    img_occ = np.asarray(image_occupations)
    cap_occ = np.asarray(caption_occupations)
    if len(signs) != n_img or img_occ.shape != (n_img,):
        raise ValueError(f"scores have {n_img} image columns but there are {len(signs)} gender "
                         f"labels and image_occupations of shape {img_occ.shape}")
    if cap_occ.shape != (n_c,):
        raise ValueError(f"scores have {n_c} caption rows but caption_occupations has shape "
                         f"{cap_occ.shape}")
    unknown = sorted(set(cap_occ.tolist()) - set(img_occ.tolist()))
    if unknown:
        raise ValueError(f"caption occupations {unknown[:5]} have no image in the pool")
    return s, signs, img_occ, cap_occ


def retrieval_bias_metrics(scores, image_genders: Sequence[str], image_occupations,
                           caption_occupations, *, ns: Sequence[int] = BIAS_NS,
                           precision_ks: Sequence[int] = PRECISION_KS,
                           pool: str = "all") -> dict[str, float]:
    """Gender bias and occupation precision of one method's scores.

    scores (n_c, n_img): caption c's score for image i; image_genders (n_img,) labels;
    image_occupations (n_img,) and caption_occupations (n_c,): any comparable ids (names or
    ints). Returns ``{"Bias@n", "AbsBias@n"}`` for n in ``ns`` and, for ``pool="all"``,
    ``{"P@k"}`` (percent) for k in ``precision_ks`` (definitions in the module docstring).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    s, signs, img_occ, cap_occ = _check_labels(scores, image_genders, image_occupations,
                                               caption_occupations)
    ns = [check_positive_int(n, "every n in ns") for n in ns]
    precision_ks = [check_positive_int(k, "every k in precision_ks") for k in precision_ks]
    if not ns:
        raise ValueError("ns is empty; pass e.g. ns=(6, 10)")
    n_img = s.shape[1]
    for name, values in (("n", ns), ("k", precision_ks if pool == "all" else [])):
        if values and max(values) > n_img:
            raise ValueError(f"{name}={max(values)} is larger than the {n_img} images in the "
                             f"pool; use {name} <= {n_img}")
    if pool == "all":
        top = rank_images(s, max(ns + precision_ks))
        ranked_signs, ranked_occ = signs[top], img_occ[top]
    else:
        ranked_signs = []
        for c, occ in enumerate(cap_occ):
            cols = np.flatnonzero(img_occ == occ)
            if max(ns) > len(cols):
                raise ValueError(f"n={max(ns)} exceeds the {len(cols)} images of occupation "
                                 f"{occ.item()!r} (pool='occupation'); use n <= {len(cols)}")
            ranked_signs.append(signs[cols[rank_images(s[c:c + 1, cols], max(ns))[0]]])
        ranked_signs = np.stack(ranked_signs)
    out = {}
    for n in ns:
        per_caption = bias_at_n(ranked_signs, n)
        out[f"Bias@{n}"] = float(per_caption.mean())
        out[f"AbsBias@{n}"] = float(np.abs(per_caption).mean())
    if pool == "all":
        for k in precision_ks:
            out[f"P@{k}"] = float(occupation_precision(ranked_occ, cap_occ, k).mean())
    return out


def compare_methods(methods: Mapping[str, object], caption_embeddings, data: VisoGenderSet,
                    **metric_kwargs) -> dict[str, dict[str, float]]:
    """Metrics of each fitted method (fitted on the ``data`` images, in order) for the captions.

    caption_embeddings (n_occ, d): one per occupation, in ``data.occupation_names`` order
    (``data.captions``). Returns ``{method name: retrieval_bias_metrics(...)}``.
    """
    names = data.occupation_names
    q = as_matrix(caption_embeddings, "caption_embeddings")
    if len(q) != len(names):
        raise ValueError(f"caption_embeddings has {len(q)} rows but the set has {len(names)} "
                         "occupations; embed data.captions (one caption per occupation)")
    out = {}
    for name, method in methods.items():
        n_img = len(getattr(method, "gallery_", ()))
        if n_img != len(data):
            raise ValueError(f"method {name!r} is fitted on {n_img} images but the set has "
                             f"{len(data)}; fit it on the set's image embeddings")
        out[name] = retrieval_bias_metrics(method.score(q), data.genders, data.occupations,
                                           names, **metric_kwargs)
    return out


def gender_bias_study(image_embeddings, caption_embeddings, data: VisoGenderSet,
                      reference_captions, *, k: int = PAPER_K, alpha: float = PAPER_ALPHA,
                      nnn_kwargs: Mapping | None = None,
                      **metric_kwargs) -> dict[str, dict[str, float]]:
    """The paper's comparison: raw similarity (``"original"``) against NNN (``"nnn"``).

    image_embeddings (n, d): the ``data`` images in order; caption_embeddings (n_occ, d): the
    ``data.captions``; reference_captions (n_ref, d): the reference queries of NNN (COCO
    training captions in the paper). Returns ``{"original": metrics, "nnn": metrics}``.
    """
    images = as_matrix(image_embeddings, "image_embeddings")
    methods = {
        "original": Identity().fit(images),
        "nnn": NNN(k=k, alpha=alpha, **dict(nnn_kwargs or {})).fit(images, query_bank=reference_captions),
    }
    results = compare_methods(methods, caption_embeddings, data, **metric_kwargs)
    for metric in results["original"]:
        log.info("gender bias %s: original %.3f -> NNN %.3f", metric, results["original"][metric],
                 results["nnn"][metric])
    return results


def embed_visogender_images(encoder, data: VisoGenderSet) -> np.ndarray:
    """(n, d) float32 embeddings of the ``data`` images with a loaded ``Encoder``."""
    import torch
    from PIL import Image

    out = []
    for start in range(0, len(data), encoder.batch_size):
        pixels = []
        for path in data.image_paths[start:start + encoder.batch_size]:
            with Image.open(path) as im:
                pixels.append(encoder.image_transform(im.convert("RGB")))
        out.append(encoder.encode_image_batch(torch.stack(pixels)).float().cpu().numpy())
    return np.concatenate(out, axis=0)


def run_gender_bias_study(encoder, data: VisoGenderSet, reference_captions, **study_kwargs
                          ) -> dict[str, dict[str, float]]:
    """Embed ``data`` (images and ``data.captions``) with a loaded ``encoder`` and run
    ``gender_bias_study``; ``reference_captions`` (n_ref, d) come from the same encoder."""
    images = embed_visogender_images(encoder, data)
    captions = encoder.encode_texts(data.captions)
    return gender_bias_study(images, captions, data, reference_captions, **study_kwargs)
