"""Retrieval metrics in both directions, bootstrap confidence intervals and hubness statistics.

Ranks are computed from a *fitted method* (anything whose ``score(queries)`` returns an
(b, n_g) float32 array, e.g. a ``nnn.methods.base.RetrievalMethod``), ``batch_size`` queries at
a time, so an n_q x n_g score matrix is never held (COCO's 25,000 x 5,000 runs in ~20 MB chunks).

Definitions:

- Rank (1-based) of a query = 1 + the number of *non-relevant* gallery items whose score is
  **greater than or equal to** the best score of a relevant item. Ties are therefore broken
  pessimistically (against the method): a method that gives every item the same score gets the
  worst possible rank, never a perfect one.
- Text->image (t2i): queries are captions, the gallery is images, the one relevant item of
  caption j is image ``caption_to_image[j]``.
- Image->text (i2t): queries are images, the gallery is captions, the relevant items of image i
  are all captions j with ``caption_to_image[j] == i``; the best-ranked one counts, so R@k is a
  hit when ANY of the image's captions is in the top k (the paper's protocol).
- R@k = percentage (0-100) of queries with rank <= k. Median and mean rank are of the 1-based
  ranks. Confidence intervals are percentile bootstrap intervals (``percentile_bootstrap``: the
  draws and interval of ``scipy.stats.bootstrap(method="percentile")``, seeded) over queries
  resampled with replacement, or over groups of queries (an image with all its captions: the
  pipeline's default for text->image); ``paired_delta`` gives the interval of a method's gain
  over the baseline from the same resamples.
- Hubness: N_k(r) = how often gallery item r is among a query's top k (``k_occurrence``);
  ``hubness_stats`` summarises its distribution (see there).
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from nnn._arrays import check_non_negative, check_positive_int
from nnn.data.base import check_caption_index

#: Bootstrap resamples are drawn in batches of at most this many rank values (memory bound).
_BOOT_ELEMENTS_PER_BATCH = 4_000_000


# -- ranks ---------------------------------------------------------------------------------------
def _n_queries(queries, name: str) -> int:
    """Number of rows of a 2-D NumPy array / torch tensor of queries (full checks: method.score)."""
    shape = getattr(queries, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array or tensor, got "
                         f"{type(queries).__name__} with shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(shape)}); pass at least one query")
    return int(shape[0])


def _score_chunks(method, queries, batch_size: int, desc: str):
    """Yield ``(start, stop, scores)`` with scores (stop - start, n_g) from ``method.score``."""
    n_q = _n_queries(queries, "queries")
    batch_size = check_positive_int(batch_size, "batch_size")
    n_g = None
    for start in tqdm(range(0, n_q, batch_size), desc=desc, leave=False, disable=None):
        stop = min(start + batch_size, n_q)
        s = np.asarray(method.score(queries[start:stop]))
        if s.ndim != 2 or s.shape[0] != stop - start or (n_g is not None and s.shape[1] != n_g):
            raise ValueError(f"{type(method).__name__}.score returned shape {s.shape} for "
                             f"{stop - start} queries; expected ({stop - start}, n_gallery)")
        if np.isnan(s).any():
            raise ValueError(f"{type(method).__name__}.score returned NaN for queries "
                             f"{start}..{stop - 1}; check the method's inputs and parameters")
        n_g = s.shape[1]
        yield start, stop, s


def first_relevant_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """scores, relevant: (b, n_g) -> (b,) 1-based rank of the best-scored relevant item.

    Ties with non-relevant items count against the query (pessimistic).
    """
    best = np.where(relevant, scores, -np.inf).max(axis=1)
    return 1 + ((scores >= best[:, None]) & ~relevant).sum(axis=1)


def relevant_block(direction: str, caption_to_image: np.ndarray, start: int, stop: int,
                   n_gallery: int) -> np.ndarray:
    """(stop - start, n_gallery) bool: the relevant gallery items of queries start..stop-1.

    "t2i": caption j's one image ``caption_to_image[j]``; "i2t": image i's captions, the gallery
    rows j with ``caption_to_image[j] == i`` (``caption_to_image`` has n_gallery entries).
    """
    if direction == "t2i":
        relevant = np.zeros((stop - start, n_gallery), dtype=bool)
        relevant[np.arange(stop - start), caption_to_image[start:stop]] = True
        return relevant
    return caption_to_image[None, :] == np.arange(start, stop)[:, None]


def t2i_ranks(method, text_queries, caption_to_image, *, batch_size: int = 1024) -> np.ndarray:
    """Text->image ranks: (n_cap,) int64, 1-based, of each caption's image.

    ``method`` is fitted on the image gallery (n_img, d); ``text_queries`` (n_cap, d);
    ``caption_to_image`` (n_cap,) rows of the gallery. Gallery images without a caption are
    allowed (distractors).
    """
    n_cap = _n_queries(text_queries, "text_queries")
    c2i = np.asarray(caption_to_image)
    if c2i.ndim != 1 or len(c2i) != n_cap:
        raise ValueError(f"caption_to_image has shape {c2i.shape} but there are {n_cap} text "
                         "queries; it needs one gallery row per caption")
    if c2i.dtype.kind not in "iu" or c2i.min() < 0:
        raise ValueError(f"caption_to_image must hold non-negative integers, got dtype "
                         f"{c2i.dtype} with minimum {c2i.min()}")
    c2i = c2i.astype(np.int64, copy=False)
    last_image = int(c2i.max())
    ranks = np.empty(n_cap, dtype=np.int64)
    for start, stop, s in _score_chunks(method, text_queries, batch_size, "t2i ranks"):
        if last_image >= s.shape[1]:
            raise ValueError(f"caption_to_image holds image rows up to {last_image} but the "
                             f"method's gallery has {s.shape[1]} images")
        relevant = relevant_block("t2i", c2i, start, stop, s.shape[1])
        ranks[start:stop] = first_relevant_rank(s, relevant)
    return ranks


def i2t_ranks(method, image_queries, caption_to_image, *, batch_size: int = 1024) -> np.ndarray:
    """Image->text ranks: (n_img,) int64, 1-based, of each image's best-ranked caption.

    ``method`` is fitted on the caption gallery (n_cap, d); ``image_queries`` (n_img, d);
    ``caption_to_image`` (n_cap,) gives the query row each gallery caption describes; every
    image needs at least one caption.
    """
    n_img = _n_queries(image_queries, "image_queries")
    c2i = check_caption_index(caption_to_image, n_img, "i2t_ranks")
    ranks = np.empty(n_img, dtype=np.int64)
    for start, stop, s in _score_chunks(method, image_queries, batch_size, "i2t ranks"):
        if s.shape[1] != len(c2i):
            raise ValueError(f"the method's gallery has {s.shape[1]} captions but "
                             f"caption_to_image has {len(c2i)} entries; fit the method on the "
                             "captions that caption_to_image describes")
        relevant = relevant_block("i2t", c2i, start, stop, s.shape[1])
        ranks[start:stop] = first_relevant_rank(s, relevant)
    return ranks


# -- recall and bootstrap ------------------------------------------------------------------------
def _check_ranks(ranks) -> np.ndarray:
    r = np.asarray(ranks)
    if r.ndim != 1 or r.dtype.kind not in "iu":
        raise ValueError(f"ranks must be a 1-D integer array, got shape {r.shape} dtype {r.dtype}")
    if len(r) == 0:
        raise ValueError("ranks is empty; compute ranks for at least one query")
    if r.min() < 1:
        raise ValueError(f"ranks are 1-based but the smallest is {r.min()}")
    return r.astype(np.int64, copy=False)


def _check_ks(ks) -> np.ndarray:
    ks = [check_positive_int(k, "every k in ks") for k in np.atleast_1d(ks).tolist()]
    if not ks:
        raise ValueError("ks is empty; pass e.g. ks=(1, 5, 10)")
    return np.asarray(ks, dtype=np.int64)


def _recall_percent(ranks: np.ndarray, ks: np.ndarray, axis: int = -1) -> np.ndarray:
    """ranks (..., n) -> R@k in percent, shape (len(ks), ...). Vectorised for the bootstrap."""
    hits = np.moveaxis(ranks, axis, -1)[..., None] <= ks
    return np.moveaxis(hits.sum(axis=-2) * 100.0 / hits.shape[-2], -1, 0)


def recall_at_k(ranks, ks=(1, 5, 10)) -> dict[str, float]:
    """``{"R@k": percent of queries with rank <= k}`` for each k; ranks (n,) 1-based."""
    r, ks = _check_ranks(ranks), _check_ks(ks)
    return {f"R@{k}": float(v) for k, v in zip(ks, _recall_percent(r, ks))}


def _group_hits(ranks: np.ndarray, ks: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """Hits per resampling unit: ((n_units, len(ks)) float64 sum of [rank <= k] over each unit's
    queries, (n_units,) its number of queries). ``groups`` (n,) ints name each query's unit
    (e.g. the image of a caption); None: every query is its own unit."""
    hit = (ranks[:, None] <= ks).astype(np.float64)
    if groups is None:
        return hit, np.ones(len(ranks))
    g = np.asarray(groups)
    if g.shape != ranks.shape or g.dtype.kind not in "iu":
        raise ValueError(f"groups must be an integer array with one entry per query "
                         f"({len(ranks)}), got shape {g.shape} dtype {g.dtype}")
    _, unit = np.unique(g, return_inverse=True)
    n_units = int(unit.max()) + 1
    sums = np.stack([np.bincount(unit, weights=hit[:, j], minlength=n_units)
                     for j in range(len(ks))], axis=1)
    return sums, np.bincount(unit, minlength=n_units).astype(np.float64)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level!r}")


# SciPy's ``stats.bootstrap`` and ``stats.skew``/``kurtosis`` are written out in NumPy here:
# importing ``scipy.stats`` costs ~1.6 s, a fifth of the default run's 8 s start-up target.
# tests/test_metrics.py checks that they give SciPy's values.
def percentile_bootstrap(n_units: int, statistic, *, n_boot: int, batch: int,
                         rng: np.random.Generator, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``statistic`` over ``n_units`` units resampled with
    replacement: ``scipy.stats.bootstrap((np.arange(n_units),), statistic, n_resamples=n_boot,
    batch=batch, method="percentile", confidence_level=level, rng=rng)``, same draws, same
    interval.

    ``statistic(idx)``: idx (b, n_units) int64 resampled unit indices -> (..., b). The draws are
    ``rng.integers(0, n_units, (b, n_units))`` for consecutive batches of b <= ``batch``
    resamples; the interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of the
    ``n_boot`` statistics (linear interpolation, Hyndman & Fan's type 7, in SciPy's arithmetic).
    Returns (low, high), each of the statistic's leading shape.
    """
    n_units = check_positive_int(n_units, "n_units")
    n_boot = check_positive_int(n_boot, "n_boot")
    batch = check_positive_int(batch, "batch")
    _check_level(level)
    theta = np.concatenate(
        [np.asarray(statistic(rng.integers(0, n_units, (min(batch, n_boot - start), n_units))),
                    dtype=np.float64) for start in range(0, n_boot, batch)], axis=-1)
    theta.sort(axis=-1)
    alpha = np.float64((1 - level) / 2)
    bounds = []
    for p in (alpha, 1 - alpha):
        position = p * n_boot + (1 - p)  # its 1-based position in sorted order, 1 <= . <= n_boot
        below = int(position // 1) - 1
        above = min(below + 1, n_boot - 1)
        g = position % 1
        bounds.append((1 - g) * theta[..., below] + g * theta[..., above])
    return bounds[0], bounds[1]


def _bootstrap_recall(hits: np.ndarray, sizes: np.ndarray, *, n_boot: int, seed: int,
                      level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap of R@k = 100 * sum(hits) / sum(sizes) over resampled units.

    ``hits`` (n_units, n_k), ``sizes`` (n_units,). ``percentile_bootstrap`` resamples the unit
    *indices* and the statistic sums the resampled units' hits and sizes, so a unit (an image
    with all its captions) is drawn as a whole. The draws depend only on (n_units, n_boot,
    seed): two calls with the same units and seed use the same resamples, which makes a CI of a
    difference (``paired_delta``) paired. Returns (point, low, high), each (n_k,).
    """
    n_boot = check_positive_int(n_boot, "n_boot")
    _check_level(level)
    point = 100.0 * hits.sum(axis=0) / sizes.sum()
    if len(sizes) == 1:  # every resample of one unit is that unit
        return point, point, point

    def statistic(idx):  # idx (b, n_units) resampled unit indices -> (n_k, b)
        return (100.0 * hits[idx].sum(axis=-2) / sizes[idx].sum(axis=-1)[..., None]).T

    low, high = percentile_bootstrap(
        len(sizes), statistic, n_boot=n_boot, level=level, rng=np.random.default_rng(seed),
        batch=max(1, _BOOT_ELEMENTS_PER_BATCH // (len(sizes) * hits.shape[1])))
    return point, low, high


def rank_summary(ranks, ks=(1, 5, 10), *, groups=None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """R@k with bootstrap confidence intervals, median and mean rank.

    Returns a flat dict: ``R@k``, ``R@k_ci_low``, ``R@k_ci_high`` (percent) for each k, and
    ``median_rank``, ``mean_rank``, ``n_queries``. The interval is the percentile bootstrap
    interval at ``level`` from ``n_boot`` resamples drawn from ``numpy.random.default_rng(seed)``.
    ``groups`` (n,) ints: resample groups with replacement and take all their queries (e.g. the
    captions' images for text->image, whose 5 captions per image are not independent); None:
    resample queries.
    """
    r, ks = _check_ranks(ranks), _check_ks(ks)
    point, low, high = _bootstrap_recall(*_group_hits(r, ks, groups), n_boot=n_boot, seed=seed,
                                         level=level)
    out: dict[str, float] = {}
    for k, p, lo, hi in zip(ks, point, low, high):
        out[f"R@{k}"] = float(p)
        out[f"R@{k}_ci_low"] = float(lo)
        out[f"R@{k}_ci_high"] = float(hi)
    out["median_rank"] = float(np.median(r))
    out["mean_rank"] = float(r.mean())
    out["n_queries"] = len(r)
    return out


def paired_delta(base_ranks, method_ranks, ks=(1, 5, 10), *, groups=None, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """R@k(method) - R@k(baseline) with a *paired* bootstrap interval: each resample draws the
    same queries (or ``groups``, as in ``rank_summary``) for both, so the interval reflects the
    per-query differences; a gain is significant at ``level`` when the interval excludes 0.

    ``base_ranks``, ``method_ranks``: (n,) 1-based ranks of the same queries. Returns ``R@k``,
    ``R@k_ci_low``, ``R@k_ci_high`` (percentage points). With the same ``groups``, ``n_boot``
    and ``seed`` the resamples are those of ``rank_summary``'s intervals.
    """
    b, m, ks = _check_ranks(base_ranks), _check_ranks(method_ranks), _check_ks(ks)
    if b.shape != m.shape:
        raise ValueError(f"base_ranks and method_ranks must rank the same queries, got "
                         f"{len(b)} and {len(m)} ranks")
    hits_b, sizes = _group_hits(b, ks, groups)
    point, low, high = _bootstrap_recall(_group_hits(m, ks, groups)[0] - hits_b, sizes,
                                         n_boot=n_boot, seed=seed, level=level)
    out: dict[str, float] = {}
    for k, p, lo, hi in zip(ks, point, low, high):
        out.update({f"R@{k}": float(p), f"R@{k}_ci_low": float(lo), f"R@{k}_ci_high": float(hi)})
    return out


# -- hubness -------------------------------------------------------------------------------------
def k_occurrence(method, queries, *, k: int = 1, batch_size: int = 1024) -> np.ndarray:
    """N_k: (n_g,) int64, how often each gallery item is among a query's top k.

    ``method`` is a fitted ``RetrievalMethod`` (uses ``method.search`` and ``method.gallery_``);
    ties inside the top k are broken by ``search``. Sums to n_q * k.
    """
    n_q = _n_queries(queries, "queries")
    n_g = len(method.gallery_)
    k = check_positive_int(k, "k", upper=n_g, upper_name="the gallery size")
    batch_size = check_positive_int(batch_size, "batch_size")
    counts = np.zeros(n_g, dtype=np.int64)
    for start in tqdm(range(0, n_q, batch_size), desc="k-occurrence", leave=False, disable=None):
        _, ids = method.search(queries[start:start + batch_size], top_k=k)
        counts += np.bincount(np.asarray(ids).ravel(), minlength=n_g)
    return counts


def _central_moments(x: np.ndarray, mean: float) -> tuple[float, float, float]:
    """Population central moments m2, m3, m4 of x (n,) float64 about its ``mean``."""
    d = x - mean
    d2 = d * d
    return float(d2.mean()), float((d2 * d).mean()), float((d2 * d2).mean())


def hubness_stats(counts, *, k: int = 1, hub_size: float = 2.0) -> dict[str, float]:
    """Summary of a k-occurrence distribution counts (n_g,) (non-negative integers).

    - ``skewness``: m3 / m2^1.5 from the population central moments m_p (``scipy.stats.skew``
      with bias=True).
    - ``kurtosis``: m4 / m2^2 - 3, Fisher's definition (*excess* kurtosis, 0 for a normal
      distribution; ``scipy.stats.kurtosis``). The paper's Table 3 (e.g. CLIP Flickr 9.0 -> 1.1)
      must be excess kurtosis: Pearson kurtosis is >= 1 + skewness^2 and ~3 for count data,
      so 1.1 would be impossible for it. Both are reported as 0 when all counts are equal (no
      spread, no hubs).
    - ``max``: the largest N_k; ``mean``: the mean N_k (= n_q * k / n_g).
    - ``never_retrieved``: percent of gallery items with N_k = 0 (anti-hubs).
    - ``robin_hood``: Robin Hood (Hoover) index in percent, 100 * 0.5 * sum|N_i - mean| / sum N_i:
      the share of occurrences that would have to move to make N_k uniform (0 = uniform).
    - ``hubs``: number of items with N_k >= ``hub_size`` * k (k: the N_k's k), the definition of
      scikit-hubness (``Hubness(hub_size=2)``: its code counts k-occurrence >= hub_size * k).
      Not relative to the mean N_k (= n_q k / n_g), which differs from k when n_q != n_g
      (image->text: 1 image query per 5 captions).
    """
    c = np.asarray(counts)
    if c.ndim != 1 or c.dtype.kind not in "iu" or len(c) == 0:
        raise ValueError(f"counts must be a non-empty 1-D integer array, got shape {c.shape} "
                         f"dtype {c.dtype}")
    if c.min() < 0 or c.sum() == 0:
        raise ValueError(f"counts must be >= 0 with a positive total, got min {c.min()} and "
                         f"total {c.sum()}")
    k = check_positive_int(k, "k")
    hub_size = check_non_negative(hub_size, "hub_size")
    x = c.astype(np.float64)
    mean = x.mean()
    spread = bool((x != x[0]).any())
    m2, m3, m4 = _central_moments(x, mean)
    return {
        "skewness": float(m3 / m2 ** 1.5) if spread else 0.0,
        "kurtosis": float(m4 / m2 ** 2 - 3.0) if spread else 0.0,
        "max": float(x.max()),
        "mean": float(mean),
        "never_retrieved": float((x == 0).mean() * 100.0),
        "robin_hood": float(50.0 * np.abs(x - mean).sum() / x.sum()),
        "hubs": float((x >= hub_size * k).sum()),
    }
