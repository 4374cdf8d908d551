"""Tests of nnn.metrics against hand-built cases and dense float64 NumPy references."""

import numpy as np
import pytest
import torch

from nnn import metrics
from nnn.methods.base import RetrievalMethod
from tolerances import dot_atol


class DotProduct(RetrievalMethod):
    """Plain inner-product retrieval (no correction)."""

    def _score_block(self, q):
        return q @ self._gallery_t.T


class TableScores:
    """Duck-typed method whose scores are a fixed table; a query is its row number, shape (1,)."""

    def __init__(self, table):
        self.table = np.asarray(table, dtype=np.float32)

    def score(self, queries):
        return self.table[np.asarray(queries)[:, 0].astype(int)]


def row_queries(n):
    return np.arange(n, dtype=np.float32)[:, None]


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_caption_index(rng, n_img, n_cap):
    """Every image gets at least one caption, the rest at random; shuffled."""
    c2i = np.concatenate([np.arange(n_img), rng.integers(0, n_img, n_cap - n_img)])
    return rng.permutation(c2i)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n_img, n_cap, d = 37, 97, 16
    img, txt = unit_rows(rng, n_img, d), unit_rows(rng, n_cap, d)
    c2i = random_caption_index(rng, n_img, n_cap)
    txt = txt + 0.8 * img[c2i]  # make matches likelier than chance, so ranks vary
    txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
    return img, txt, c2i


# -- dense float64 references, written from the definition ----------------------------------------
def reference_t2i(img, txt, c2i):
    s = txt.astype(np.float64) @ img.astype(np.float64).T
    ranks = []
    for j in range(len(txt)):
        true = s[j, c2i[j]]
        others = np.delete(s[j], c2i[j])
        ranks.append(1 + int((others >= true).sum()))
    return np.array(ranks)


def reference_i2t(img, txt, c2i):
    s = img.astype(np.float64) @ txt.astype(np.float64).T
    ranks = []
    for i in range(len(img)):
        rel = c2i == i
        best = s[i, rel].max()
        ranks.append(1 + int((s[i, ~rel] >= best).sum()))
    return np.array(ranks)


def rank_gap(img, txt, c2i):
    """Smallest |s - best relevant score| over the other items of a query, t2i and i2t (float64).
    Scores rounded by less than half of it cannot change a rank."""
    s = txt.astype(np.float64) @ img.astype(np.float64).T             # (n_cap, n_img)
    gaps = []
    for scores, relevant in ((s, c2i[:, None] == np.arange(len(img))[None, :]),
                             (s.T, c2i[None, :] == np.arange(len(img))[:, None])):
        best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
        gaps.append(np.abs(np.where(relevant, np.inf, scores - best)).min())
    return min(gaps)


def top_k_gap(a, b, k):
    """Smallest gap between the k-th and (k+1)-th score of a query (rows of a against b)."""
    s = -np.sort(-(a.astype(np.float64) @ b.astype(np.float64).T), axis=1)
    return (s[:, k - 1] - s[:, k]).min()


#: float32 scores of the 16-d unit rows of ``data``, in any summation order (tolerances.py)
DATA_ATOL = dot_atol(16)


# -- ranks ---------------------------------------------------------------------------------------
def test_t2i_hand_built():
    # 3 captions x 4 images; caption -> image 0, 2, 3
    table = [[0.9, 0.1, 0.2, 0.3],   # true image 0 best -> rank 1
             [0.5, 0.6, 0.4, 0.1],   # true image 2 has two better -> rank 3
             [0.7, 0.8, 0.9, 0.2]]   # true image 3 worst -> rank 4
    ranks = metrics.t2i_ranks(TableScores(table), row_queries(3), np.array([0, 2, 3]))
    assert ranks.dtype == np.int64
    assert ranks.tolist() == [1, 3, 4]


def test_i2t_hit_by_second_caption():
    # 2 images x 4 captions; captions 0, 1 describe image 0, captions 2, 3 describe image 1
    c2i = np.array([0, 0, 1, 1])
    table = [[0.1, 0.9, 0.5, 0.2],   # image 0: its 2nd caption (1) is top -> rank 1
             [0.8, 0.7, 0.1, 0.6]]   # image 1: best own caption (3) behind captions 0, 1 -> 3
    ranks = metrics.i2t_ranks(TableScores(table), row_queries(2), c2i)
    assert ranks.tolist() == [1, 3]
    assert metrics.recall_at_k(ranks, ks=(1, 5)) == {"R@1": 50.0, "R@5": 100.0}


def test_ties_count_against_the_method():
    # a tie between the relevant item and one other item -> rank 2; all-equal -> worst rank
    ranks = metrics.t2i_ranks(TableScores([[0.5, 0.5, 0.1], [0.3, 0.3, 0.3]]),
                              row_queries(2), np.array([1, 0]))
    assert ranks.tolist() == [2, 3]
    # i2t: image 0 has 2 of 5 captions; constant scores -> the 3 others rank above -> 4
    c2i = np.array([0, 1, 0, 1, 1])
    ranks = metrics.i2t_ranks(TableScores(np.zeros((2, 5))), row_queries(2), c2i)
    assert ranks.tolist() == [4, 3]
    # ties among relevant items do not matter
    ranks = metrics.i2t_ranks(TableScores([[0.7, 0.1, 0.7, 0.2, 0.3]]), row_queries(1),
                              np.array([0, 0, 0, 0, 0]))
    assert ranks.tolist() == [1]


@pytest.mark.parametrize("batch_size", [1, 10, 36, 1000])
def test_ranks_match_dense_reference_in_chunks(data, batch_size):
    img, txt, c2i = data
    # no near-ties that float32 could flip (here or on another CPU)
    assert rank_gap(img, txt, c2i) > 2 * DATA_ATOL
    t2i = metrics.t2i_ranks(DotProduct().fit(img), txt, c2i, batch_size=batch_size)
    i2t = metrics.i2t_ranks(DotProduct().fit(txt), img, c2i, batch_size=batch_size)
    np.testing.assert_array_equal(t2i, reference_t2i(img, txt, c2i))
    np.testing.assert_array_equal(i2t, reference_i2t(img, txt, c2i))
    assert 1 < t2i.max() and (t2i == 1).any()  # the case is not degenerate


def test_ranks_accept_torch_queries(data):
    img, txt, c2i = data
    method = DotProduct().fit(img)
    np.testing.assert_array_equal(metrics.t2i_ranks(method, torch.from_numpy(txt), c2i,
                                                    batch_size=13),
                                  metrics.t2i_ranks(method, txt, c2i))


def test_t2i_allows_distractor_images(data):
    img, txt, c2i = data
    keep = c2i < 30  # images 30..36 get no caption but stay in the gallery
    ranks = metrics.t2i_ranks(DotProduct().fit(img), txt[keep], c2i[keep], batch_size=8)
    np.testing.assert_array_equal(ranks, reference_t2i(img, txt[keep], c2i[keep]))


def test_rank_input_errors(data):
    img, txt, c2i = data
    method = DotProduct().fit(img)
    with pytest.raises(ValueError, match="caption_to_image has shape"):
        metrics.t2i_ranks(method, txt, c2i[:-1])
    with pytest.raises(ValueError, match="up to 40"):
        metrics.t2i_ranks(method, txt, np.where(c2i == 0, 40, c2i))
    with pytest.raises(ValueError, match="non-negative integers"):
        metrics.t2i_ranks(method, txt, c2i.astype(float))
    with pytest.raises(ValueError, match="text_queries is empty"):
        metrics.t2i_ranks(method, txt[:0], c2i[:0])
    with pytest.raises(ValueError, match="2-D"):
        metrics.t2i_ranks(method, txt[0], c2i[:1])
    with pytest.raises(ValueError, match="batch_size"):
        metrics.t2i_ranks(method, txt, c2i, batch_size=0)
    with pytest.raises(ValueError, match="gallery has 37 captions"):  # fitted on the images
        metrics.i2t_ranks(method, img, c2i)
    with pytest.raises(ValueError, match="images have no caption"):
        metrics.i2t_ranks(DotProduct().fit(txt[c2i > 0]), img, c2i[c2i > 0])
    with pytest.raises(ValueError, match="NaN"):
        metrics.t2i_ranks(TableScores([[np.nan, 1.0]]), row_queries(1), np.array([0]))


# -- recall and bootstrap ------------------------------------------------------------------------
def test_recall_and_rank_summary_values():
    ranks = np.array([1, 2, 6, 11])
    assert metrics.recall_at_k(ranks) == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0}
    s = metrics.rank_summary(ranks, n_boot=200)
    assert s["median_rank"] == 4.0 and s["mean_rank"] == 5.0 and s["n_queries"] == 4
    assert s["R@5"] == 50.0
    for k in (1, 5, 10):
        assert s[f"R@{k}_ci_low"] <= s[f"R@{k}"] <= s[f"R@{k}_ci_high"]


def test_bootstrap_is_seeded_and_narrows_with_more_queries():
    rng = np.random.default_rng(1)
    many = rng.geometric(0.5, size=20_000)  # P(rank 1) = 0.5
    few = many[:200]
    a = metrics.rank_summary(many, ks=(1,), n_boot=300, seed=3)
    assert a == metrics.rank_summary(many, ks=(1,), n_boot=300, seed=3)
    assert a != metrics.rank_summary(many, ks=(1,), n_boot=300, seed=4)
    b = metrics.rank_summary(few, ks=(1,), n_boot=300, seed=3)
    width_many = a["R@1_ci_high"] - a["R@1_ci_low"]
    width_few = b["R@1_ci_high"] - b["R@1_ci_low"]
    assert width_many < width_few / 5
    # a percentile interval of a proportion is close to the normal approximation
    p = a["R@1"] / 100
    half = 100 * 1.96 * np.sqrt(p * (1 - p) / len(many))
    assert width_many == pytest.approx(2 * half, rel=0.25)
    for s in (a, b):
        assert s["R@1_ci_low"] <= s["R@1"] <= s["R@1_ci_high"]
    narrower = metrics.rank_summary(many, ks=(1,), n_boot=300, seed=3, level=0.5)
    assert narrower["R@1_ci_high"] - narrower["R@1_ci_low"] < width_many


def test_bootstrap_degenerate_cases():
    s = metrics.rank_summary(np.array([3]), n_boot=10)
    assert s["R@1"] == s["R@1_ci_low"] == s["R@1_ci_high"] == 0.0
    s = metrics.rank_summary(np.ones(50, dtype=np.int64), ks=(1,), n_boot=10)
    assert s["R@1_ci_low"] == s["R@1_ci_high"] == 100.0


@pytest.mark.parametrize("kwargs, match", [
    ({"ranks": np.array([], dtype=np.int64)}, "ranks is empty"),
    ({"ranks": np.array([0, 1])}, "1-based"),
    ({"ranks": np.array([1.0, 2.0])}, "integer"),
    ({"ranks": np.array([1, 2]), "ks": (0, 5)}, "every k in ks"),
    ({"ranks": np.array([1, 2]), "ks": ()}, "ks is empty"),
    ({"ranks": np.array([1, 2]), "n_boot": 0}, "n_boot"),
    ({"ranks": np.array([1, 2]), "level": 1.0}, "level"),
])
def test_summary_input_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.rank_summary(**kwargs)


# -- hubness -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k, batch_size", [(1, 7), (5, 100)])
def test_k_occurrence_matches_dense_reference(data, k, batch_size):
    img, txt, _ = data
    assert top_k_gap(txt, img, k) > 2 * DATA_ATOL  # the top-k sets are not near-ties
    counts = metrics.k_occurrence(DotProduct().fit(img), txt, k=k, batch_size=batch_size)
    top = np.argsort(-(txt.astype(np.float64) @ img.astype(np.float64).T), axis=1)[:, :k]
    np.testing.assert_array_equal(counts, np.bincount(top.ravel(), minlength=len(img)))
    assert counts.sum() == len(txt) * k and counts.dtype == np.int64


def test_k_occurrence_errors(data):
    img, txt, _ = data
    with pytest.raises(ValueError, match="gallery size"):
        metrics.k_occurrence(DotProduct().fit(img), txt, k=len(img) + 1)


def test_hubness_uniform_counts():
    s = metrics.hubness_stats(np.full(10, 5), k=5)
    assert s == {"skewness": 0.0, "kurtosis": 0.0, "max": 5.0, "mean": 5.0,
                 "never_retrieved": 0.0, "robin_hood": 0.0, "hubs": 0.0}
    # scikit-hubness's hubs are absolute, N_k >= 2k: with k = 1 every item (N_1 = 5) is one
    assert metrics.hubness_stats(np.full(10, 5))["hubs"] == 10


def test_hubness_one_hub():
    n = 20
    s = metrics.hubness_stats(np.array([n * 3] + [0] * (n - 1)), k=3)
    p = 1 / n  # a scaled Bernoulli(p): closed-form population moments
    assert s["skewness"] == pytest.approx((1 - 2 * p) / np.sqrt(p * (1 - p)))
    assert s["kurtosis"] == pytest.approx((1 - 6 * p * (1 - p)) / (p * (1 - p)))
    assert s["robin_hood"] == pytest.approx(100 * (n - 1) / n)
    assert s["never_retrieved"] == pytest.approx(100 * (n - 1) / n)
    assert s["max"] == 60 and s["mean"] == 3 and s["hubs"] == 1


def test_hubness_against_moment_formulas():
    c = np.random.default_rng(2).poisson(3.0, size=101)
    s = metrics.hubness_stats(c)
    x = c.astype(np.float64)
    m = x.mean()
    m2, m3, m4 = (((x - m) ** p).mean() for p in (2, 3, 4))
    assert s["skewness"] == pytest.approx(m3 / m2 ** 1.5)
    assert s["kurtosis"] == pytest.approx(m4 / m2 ** 2 - 3)
    assert s["robin_hood"] == pytest.approx(100 * 0.5 * np.abs(x - m).sum() / x.sum())
    assert s["never_retrieved"] == pytest.approx(100 * (c == 0).mean())
    # hubs as scikit-hubness counts them (Hubness(k, hub_size): k-occurrence >= hub_size * k)
    for k, hub_size in ((1, 2.0), (2, 2.0), (3, 1.5)):
        want = sum(1 for n_k in c if n_k >= hub_size * k)
        assert metrics.hubness_stats(c, k=k, hub_size=hub_size)["hubs"] == want
    assert metrics.hubness_stats(np.array([4, 0, 2]), k=2)["hubs"] == 1   # N_k = 2k is a hub


@pytest.mark.parametrize("counts, match", [
    (np.array([], dtype=np.int64), "non-empty"),
    (np.array([1.5, 2.0]), "integer"),
    (np.array([-1, 3]), ">= 0"),
    (np.zeros(4, dtype=np.int64), "positive total"),
])
def test_hubness_input_errors(counts, match):
    with pytest.raises(ValueError, match=match):
        metrics.hubness_stats(counts)


# -- bootstrap by image, paired deltas ------------------------------------------------------------
def scipy_resamples(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """The unit indices (n_boot, n_units) that ``scipy.stats.bootstrap`` draws for ``n_units``
    units with this seed in one batch (recorded by a statistic that keeps its input)."""
    from scipy import stats
    seen = []

    def record(idx, axis):
        seen.append(np.array(idx))
        return idx.mean(axis=axis)

    stats.bootstrap((np.arange(n_units),), record, n_resamples=n_boot, method="percentile",
                    rng=np.random.default_rng(seed))
    return np.concatenate(seen[-1:], axis=0)   # the last call is the resampling batch


def loop_ci(values_per_resample, level=0.95):
    v = np.asarray(values_per_resample)
    return np.quantile(v, [(1 - level) / 2, (1 + level) / 2], axis=0)


def test_bootstrap_by_image_and_paired_delta_match_a_plain_loop():
    """Text->image with 5 captions per image (43 images, 215 captions): the CIs resample images
    with all their captions, and the delta's CI uses the same resamples for both rank vectors.
    Reference: a plain loop over scipy's own draws of image indices (seeded), pooling the drawn
    images' captions and computing R@k of each resample from the formula."""
    rng = np.random.default_rng(11)
    n_img, ks, n_boot, seed = 43, (1, 5), 200, 5
    c2i = np.repeat(rng.permutation(n_img), 5)               # captions of an image are grouped
    base = rng.integers(1, 12, size=len(c2i))
    meth = np.maximum(1, base - rng.integers(0, 3, size=len(c2i)))
    draws = scipy_resamples(n_img, n_boot, seed)
    assert draws.shape == (n_boot, n_img)
    members = [np.flatnonzero(c2i == i) for i in np.unique(c2i)]

    def recall(ranks, rows):
        return np.array([100.0 * (ranks[rows] <= k).mean() for k in ks])

    per_b, per_m, per_d = [], [], []
    for idx in draws:                                      # plain loop: one resample at a time
        rows = np.concatenate([members[i] for i in idx])
        per_b.append(recall(base, rows))
        per_m.append(recall(meth, rows))
        per_d.append(recall(meth, rows) - recall(base, rows))
    sb = metrics.rank_summary(base, ks, groups=c2i, n_boot=n_boot, seed=seed)
    sm = metrics.rank_summary(meth, ks, groups=c2i, n_boot=n_boot, seed=seed)
    d = metrics.paired_delta(base, meth, ks, groups=c2i, n_boot=n_boot, seed=seed)
    for summary, per in ((sb, per_b), (sm, per_m), (d, per_d)):
        low, high = loop_ci(per)
        for j, k in enumerate(ks):
            assert summary[f"R@{k}_ci_low"] == pytest.approx(low[j], abs=1e-9)
            assert summary[f"R@{k}_ci_high"] == pytest.approx(high[j], abs=1e-9)
    for k in ks:
        assert d[f"R@{k}"] == pytest.approx(sm[f"R@{k}"] - sb[f"R@{k}"])
    assert metrics.rank_summary(base, ks, n_boot=n_boot, seed=seed)["R@1"] == sb["R@1"]


def test_bootstrap_units_of_one_query_are_the_plain_bootstrap():
    """groups=None and groups with one query each give the plain per-query bootstrap, whose
    values equal scipy.stats.bootstrap on the ranks with the same seed."""
    from scipy import stats
    ranks = np.random.default_rng(3).integers(1, 9, size=57)
    a = metrics.rank_summary(ranks, (1, 5), n_boot=300, seed=2)
    assert a == metrics.rank_summary(ranks, (1, 5), groups=np.arange(57), n_boot=300, seed=2)
    ref = stats.bootstrap((ranks,), lambda x, axis: np.stack([100.0 * (x <= k).mean(axis=axis)
                                                              for k in (1, 5)]),
                          n_resamples=300, method="percentile",
                          rng=np.random.default_rng(2)).confidence_interval
    assert [a["R@1_ci_low"], a["R@5_ci_low"]] == pytest.approx(ref.low, abs=1e-9)
    assert [a["R@1_ci_high"], a["R@5_ci_high"]] == pytest.approx(ref.high, abs=1e-9)


def test_paired_delta_identical_and_shifted_ranks():
    ranks = np.random.default_rng(4).integers(1, 6, size=40)
    same = metrics.paired_delta(ranks, ranks, (1,), n_boot=100)
    assert same == {"R@1": 0.0, "R@1_ci_low": 0.0, "R@1_ci_high": 0.0}
    better = metrics.paired_delta(ranks, np.ones_like(ranks), (1,), n_boot=100)
    assert better["R@1_ci_low"] > 0          # every query improves or stays: significant gain
    with pytest.raises(ValueError, match="same queries"):
        metrics.paired_delta(ranks, ranks[:-1])
    with pytest.raises(ValueError, match="groups"):
        metrics.rank_summary(ranks, groups=np.zeros(3, dtype=int))


# -- the NumPy bootstrap and moments are SciPy's ---------------------------------------------------
def recall_statistic(hits, sizes):
    """R@k of resampled units as ``_bootstrap_recall`` computes it; idx (..., n_units)."""
    def statistic(idx, axis=-1):
        return np.moveaxis(100.0 * hits[idx].sum(axis=-2) / sizes[idx].sum(axis=-1)[..., None],
                           -1, 0)
    return statistic


@pytest.mark.parametrize("n_units, n_boot, batch, level", [
    (3, 37, 1, 0.95), (57, 999, 7, 0.95), (101, 250, 250, 0.5), (101, 250, 1000, 0.9),
    (43, 1001, 333, 0.95)])
def test_percentile_bootstrap_equals_scipy(n_units, n_boot, batch, level):
    """Same draws (seed, batches) and the same percentile interval as scipy.stats.bootstrap, for
    resampled groups of different sizes (hits summed over a group's queries)."""
    from scipy import stats
    rng = np.random.default_rng(n_units)
    sizes = rng.integers(1, 6, size=n_units).astype(np.float64)
    hits = np.stack([rng.binomial(sizes.astype(int), p) for p in (0.3, 0.6, 0.9)],
                    axis=1).astype(np.float64)
    statistic = recall_statistic(hits, sizes)
    low, high = metrics.percentile_bootstrap(n_units, statistic, n_boot=n_boot, batch=batch,
                                             rng=np.random.default_rng(9), level=level)
    ref = stats.bootstrap((np.arange(n_units),), statistic, n_resamples=n_boot, batch=batch,
                          confidence_level=level, method="percentile",
                          rng=np.random.default_rng(9)).confidence_interval
    assert low.shape == high.shape == (3,)
    np.testing.assert_allclose(low, ref.low, rtol=1e-13, atol=1e-12)   # float rounding at most
    np.testing.assert_allclose(high, ref.high, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("elements_per_batch", [1, 500, 10**9])
def test_rank_summary_batches_are_scipys(monkeypatch, elements_per_batch):
    """rank_summary by image, its resamples drawn in batches of several sizes, gives
    scipy.stats.bootstrap's interval with the same batch size and seed."""
    from scipy import stats
    monkeypatch.setattr(metrics, "_BOOT_ELEMENTS_PER_BATCH", elements_per_batch)
    rng = np.random.default_rng(6)
    c2i = np.repeat(np.arange(31), 5)
    ranks = rng.integers(1, 12, size=len(c2i))
    ks = np.array([1, 5])
    s = metrics.rank_summary(ranks, tuple(ks), groups=c2i, n_boot=201, seed=4)
    hits = (ranks[:, None] <= ks).reshape(31, 5, 2).sum(axis=1).astype(np.float64)
    ref = stats.bootstrap((np.arange(31),), recall_statistic(hits, np.full(31, 5.0)),
                          n_resamples=201, batch=max(1, elements_per_batch // (31 * 2)),
                          method="percentile", rng=np.random.default_rng(4)).confidence_interval
    np.testing.assert_allclose([s["R@1_ci_low"], s["R@5_ci_low"]], ref.low, rtol=1e-13)
    np.testing.assert_allclose([s["R@1_ci_high"], s["R@5_ci_high"]], ref.high, rtol=1e-13)


def test_percentile_bootstrap_input_errors():
    def statistic(idx):
        return idx.mean(axis=-1)

    for kwargs, match in (({"n_boot": 0}, "n_boot"), ({"batch": 0}, "batch"),
                          ({"level": 0.0}, "level")):
        args = {"n_boot": 10, "batch": 5, "level": 0.95, **kwargs}
        with pytest.raises(ValueError, match=match):
            metrics.percentile_bootstrap(4, statistic, rng=np.random.default_rng(0), **args)


@pytest.mark.parametrize("counts", [
    np.random.default_rng(2).poisson(3.0, size=101),
    np.random.default_rng(3).geometric(0.05, size=5000) - 1,
    np.array([60] + [0] * 19), np.array([1, 2])])
def test_hubness_moments_equal_scipy(counts):
    from scipy import stats
    s = metrics.hubness_stats(counts)
    x = counts.astype(np.float64)
    assert s["skewness"] == pytest.approx(stats.skew(x), rel=1e-13, abs=1e-13)
    assert s["kurtosis"] == pytest.approx(stats.kurtosis(x, fisher=True), rel=1e-13, abs=1e-13)


def test_metric_names_without_torch_are_those_reported():
    """nnn.results lists the metric names (for checking ``objective`` without torch): they are
    the keys of ``rank_summary`` and ``hubness_stats``, CIs left out."""
    from nnn.results import is_ci_key, metric_names

    reported = [*metrics.rank_summary(np.array([1, 2]), ks=[1, 3], n_boot=1),
                *(f"hubness/{k}" for k in metrics.hubness_stats(np.array([1, 1])))]
    assert metric_names([1, 3]) == [k for k in reported if not is_ci_key(k)]
