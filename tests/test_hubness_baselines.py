"""Mutual proximity, local scaling / NICDM and DisSimLocal against float64 references written from
their formulas (docstrings of nnn/methods/mutual_proximity.py, local_scaling.py, dis_sim_local.py)
at odd sizes, with memory budgets small enough that the bank is read in many chunks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from nnn.methods import DisSimLocal, LocalScaling, MutualProximity, method_class
from nnn.methods._neighbourhoods import bank_chunk_rows, bank_neighbourhoods
from tolerances import EPS32, dot_atol

N_G, N_B, N_Q, D = 53, 1013, 29, 12
#: bank rows per chunk in these tests: 1013 rows are read in 11 chunks, the last one short
CHUNK = 97
#: float32 similarities are within dot_atol(D) (1.6e-6) of the float64 ones, so 2 - 2 s (at least
#: MIN_SQ_DIST = 0.05 for every pair in these draws, asserted by ``data``) is within 3.2e-6, i.e.
#: 6.4e-5 relative; LS / NICDM multiply or divide three such quantities (or their square roots),
#: whose relative errors add up to at most ~1.3e-4, on any CPU. RTOL leaves 1.5x.
RTOL = 2e-4
MIN_SQ_DIST = 0.05


def budget(k: int, moments: bool = False) -> float:
    """A memory budget (MiB) that makes ``bank_neighbourhoods`` read CHUNK bank rows at a time."""
    per_row = ((1 + moments) * N_G + D) * 4
    mb = (2 * N_G * k * 12 + CHUNK * per_row + 1) / 2**20
    assert bank_chunk_rows(N_G, D, k, mb, moments) == CHUNK
    return mb


@pytest.fixture
def data(unit):
    g, b, q = unit(N_G, D), unit(N_B, D), unit(N_Q, D)
    for x, y in ((q, g), (g, b)):
        assert (2 - 2 * (x.astype(np.float64) @ y.T)).min() >= MIN_SQ_DIST
    return g, b, q


def dist64(s):
    return np.sqrt(np.maximum(2 - 2 * s, 0.0))


def top_desc(s, k):
    return -np.sort(-s, axis=1)[:, :k]


def sims64(q, g, b):
    q, g, b = (a.astype(np.float64) for a in (q, g, b))
    return q @ g.T, g @ b.T                                     # (n_q, n_g), (n_g, n_b)


def ref_ls(q, g, b, k, variant):
    s, sg = sims64(q, g, b)
    dq, dr = dist64(top_desc(s, k)), dist64(top_desc(sg, k))
    if variant == "standard":                                   # -d^2 / (sigma_q sigma_r)
        return -(2 - 2 * s) / (dq[:, -1:] * dr[None, :, -1]), dr[:, -1]
    mq, mr = dq.mean(axis=1), dr.mean(axis=1)                   # -d / sqrt(mu_q mu_r)
    return -dist64(s) / np.sqrt(mq[:, None] * mr[None, :]), mr


def ref_mp_gaussian(q, g, b, k):
    s, sg = sims64(q, g, b)
    dq, dr = (dist64(x) if k is None else dist64(top_desc(x, k)) for x in (s, sg))
    mq, sq, mr, sr = dq.mean(1), dq.std(1), dr.mean(1), dr.std(1)
    d = dist64(s)
    return (norm.logsf(d, mq[:, None], sq[:, None]) + norm.logsf(d, mr[None], sr[None]),
            (mr, sr))


def ref_mp_empirical_bounds(q, g, b, k, tol):
    """Lower and upper references of empirical MP: counts of neighbours with s_j < s - tol and
    s_j < s + tol (a float32 comparison may go either way within tol); on the query side, r
    itself (s_j = s exactly, in float32 as in float64) never counts."""
    s, sg = sims64(q, g, b)
    tq, tr = top_desc(s, k), top_desc(sg, k)
    out = []
    for shift in (-tol, tol):
        pq = ((tq[:, None, :] < s[:, :, None] + shift)
              & (tq[:, None, :] != s[:, :, None])).sum(-1) / k
        pr = (tr[None, :, :] < s[:, :, None] + shift).sum(-1) / k
        out.append(pq * pr)
    return out


def ref_dsl(q, g, b, k):
    s, sg = sims64(q, g, b)
    q, g, b = (a.astype(np.float64) for a in (q, g, b))
    for x in (s, sg):  # the k-th and (k+1)-th neighbours are far apart: the ids are unambiguous
        srt = -np.sort(-x, axis=1)
        assert (srt[:, k - 1] - srt[:, k]).min() > 20 * dot_atol(D)
    c_r = b[np.argsort(-sg, axis=1)[:, :k]].mean(axis=1)
    c_q = g[np.argsort(-s, axis=1)[:, :k]].mean(axis=1)
    sq = ((q[:, None, :] - g[None]) ** 2).sum(-1)
    out = -(sq - ((q - c_q) ** 2).sum(1)[:, None] - ((g - c_r) ** 2).sum(1)[None])
    return out, ((g - c_r) ** 2).sum(1) - (g ** 2).sum(1)


def test_bank_neighbourhoods_streamed(data):
    import torch

    g, b, _ = data
    k = 30
    nb = bank_neighbourhoods(torch.from_numpy(g), b, k, ids=True, moments=True,
                             memory_budget_mb=budget(k, moments=True))
    sg = g.astype(np.float64) @ b.T.astype(np.float64)
    np.testing.assert_allclose(nb.sims, top_desc(sg, k), rtol=0, atol=dot_atol(D))
    np.testing.assert_allclose(np.take_along_axis(sg, nb.ids, axis=1), nb.sims, rtol=0,
                               atol=2 * dot_atol(D))
    assert (np.diff(nb.sims, axis=1) <= 0).all() and nb.n_bank == N_B
    d = dist64(sg)
    # float64 sums of float32 distances: each off by ~dot_atol(D) / d (sqrt) + EPS32
    np.testing.assert_allclose(nb.dist_mean, d.mean(1), rtol=RTOL)
    np.testing.assert_allclose(nb.dist_var, d.var(1), rtol=RTOL)


def test_bank_moments_keep_a_small_spread():
    """Bank rows in a tight cluster far from the gallery: distances ~1.4 that vary by ~1e-3.
    E[d^2] - E[d]^2 from float32 sums cancels to noise there; the shifted sums keep it."""
    import torch

    def unit_rows(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    rng = np.random.default_rng(11)
    centre = unit_rows(rng.standard_normal((1, D)))
    bank = unit_rows(centre + 1e-3 * rng.standard_normal((N_B, D)))
    g = rng.standard_normal((N_G, D))
    g = unit_rows(g - (g @ centre.T) * centre)                # orthogonal to the cluster
    nb = bank_neighbourhoods(torch.from_numpy(g), bank, 3, moments=True,
                             memory_budget_mb=budget(3, moments=True))
    d = dist64(g.astype(np.float64) @ bank.T.astype(np.float64))
    assert d.std(1).max() < 2e-3 * d.mean(1).min()
    np.testing.assert_allclose(nb.dist_mean, d.mean(1), rtol=1e-6)
    # the distances' own float32 rounding (~1e-7 each) bounds the spread's accuracy
    np.testing.assert_allclose(np.sqrt(nb.dist_var), d.std(1), rtol=0.02)


@pytest.mark.parametrize("variant", ["standard", "nicdm"])
@pytest.mark.parametrize("k", [1, 7, 30])
def test_local_scaling_matches_reference(data, variant, k):
    g, b, q = data
    m = LocalScaling(k=k, variant=variant, batch_size=6, memory_budget_mb=budget(k))
    m.fit(g, query_bank=b)
    want, scale = ref_ls(q, g, b, k, variant)
    np.testing.assert_allclose(m.scale_, scale, rtol=RTOL)
    np.testing.assert_allclose(m.score(q), want, rtol=RTOL, atol=EPS32)


@pytest.mark.parametrize("k", [None, 2, 17])
def test_mp_gaussian_matches_reference(data, k):
    g, b, q = data
    m = MutualProximity(k=k, variant="gaussian", batch_size=6,
                        memory_budget_mb=budget(k or 1, moments=k is None)).fit(g, query_bank=b)
    want, (mean, std) = ref_mp_gaussian(q, g, b, k)
    np.testing.assert_allclose(m.mean_, mean, rtol=RTOL)
    np.testing.assert_allclose(m.std_, std, rtol=RTOL)
    # log SF's error is d's (< dot_atol / d) times the hazard rate / std, which grows like
    # |log SF| itself: a relative tolerance, plus an absolute one for values near 0
    np.testing.assert_allclose(m.score(q), want, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("k", [2, 9, 53])
def test_mp_empirical_matches_reference(data, k):
    g, b, q = data
    m = MutualProximity(k=k, variant="empirical", batch_size=6, memory_budget_mb=budget(k))
    got = m.fit(g, query_bank=b).score(q)
    lo, hi = ref_mp_empirical_bounds(q, g, b, k, tol=2 * dot_atol(D))
    assert ((got >= lo - EPS32) & (got <= hi + EPS32)).all()
    assert (lo == hi).mean() > 0.99  # near-ties are rare: the check is tight almost everywhere


@pytest.mark.parametrize("k", [1, 5, 24])
def test_dsl_matches_reference(data, k):
    g, b, q = data
    m = DisSimLocal(k=k, batch_size=6, memory_budget_mb=budget(k)).fit(g, query_bank=b)
    want, term = ref_dsl(q, g, b, k)
    # sums of O(1) float32 terms: absolute errors of a few dot_atol(D)
    np.testing.assert_allclose(m.gallery_term_, term, rtol=0, atol=4 * dot_atol(D))
    np.testing.assert_allclose(m.score(q), want, rtol=0, atol=16 * dot_atol(D))


@pytest.mark.parametrize("make", [
    lambda: LocalScaling(k=4, k_max=30), lambda: LocalScaling(k=4, variant="nicdm", k_max=30),
    lambda: MutualProximity(k=4, k_max=30), lambda: MutualProximity(k=4, k_max=30,
                                                                    variant="empirical"),
    lambda: DisSimLocal(k=4, k_max=30)], ids=["ls", "nicdm", "mp", "mp_empirical", "dsl"])
def test_with_params_equals_a_fresh_fit(data, make):
    g, b, q = data
    wide = make().fit(g, query_bank=b)
    for k in (2, 17, 30):
        fresh = type(wide)(**{**_kwargs(wide), "k": k, "k_max": None}).fit(g, query_bank=b)
        np.testing.assert_allclose(wide.with_params(k=k).score(q), fresh.score(q), rtol=1e-6,
                                   atol=1e-6)
    with pytest.raises(ValueError, match=r"k=31 is larger than the stored top-k table"):
        wide.with_params(k=31)


def test_whole_bank_mp_takes_no_other_k(data):
    g, b, q = data
    m = MutualProximity(k=None).fit(g, query_bank=b)
    np.testing.assert_array_equal(m.with_params().score(q), m.score(q))
    with pytest.raises(ValueError, match=r"k=4 cannot come from a MutualProximity\(k=None\) fit"):
        m.with_params(k=4)


def _kwargs(m):
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and not k.endswith("_")}


@pytest.mark.parametrize("make,match", [
    (lambda: LocalScaling(k=N_B + 1), rf"k={N_B + 1} is larger than the query_bank \({N_B} rows\)"),
    (lambda: DisSimLocal(k=N_G + 1), rf"k={N_G + 1} is larger than the gallery \({N_G} rows\)"),
    (lambda: MutualProximity(k=3, k_max=N_B + 5), rf"k_max={N_B + 5} is larger than the query_bank"),
    (lambda: MutualProximity(k=1), "k=1 is too small for MutualProximity"),
    (lambda: MutualProximity(variant="empirical"), "variant='empirical' needs a neighbourhood size k"),
    (lambda: MutualProximity(variant="exact"), r"variant must be one of \('gaussian', 'empirical'\)"),
    (lambda: LocalScaling(variant="ls"), r"variant must be one of \('standard', 'nicdm'\), got 'ls'"),
    (lambda: LocalScaling(k=0), "k must be a positive integer, got 0"),
    (lambda: DisSimLocal(memory_budget_mb=0), "memory_budget_mb must be a finite number > 0"),
])
def test_bad_input_is_named(data, make, match):
    g, b, _ = data
    with pytest.raises(ValueError, match=match):
        make().fit(g, query_bank=b)


def test_registry_and_grids():
    for name, cls in (("mp", MutualProximity), ("ls", LocalScaling), ("dsl", DisSimLocal),
                      ("MP", MutualProximity), ("DisSimLocal", DisSimLocal)):
        assert method_class(name) is cls
    assert MutualProximity.tuning_grid["ks"][0] == 2
    assert LocalScaling.tuning_grid["ks"][0] == DisSimLocal.tuning_grid["ks"][0] == 1


@pytest.mark.parametrize("option,cls,extra", [
    ("mp", MutualProximity, ["method.variant=empirical"]), ("ls", LocalScaling, []),
    ("dsl", DisSimLocal, ["method.k=3"])])
def test_config_runs_tuned_on_the_tuning_part(tmp_path, option, cls, extra):
    """``method=mp|ls|dsl tune.enabled=true`` composes, tunes k on the tuning part (one fit per
    direction, nnn.tuning.tune_neighbourhood_k) and evaluates the chosen k on test."""
    from nnn.pipeline import run
    from nnn.settings import build_method, compose

    overrides = ["debug=tiny", "logger=none", f"method={option}", *extra]
    assert type(build_method(compose(overrides))) is cls
    cfg = compose([*overrides, "reference.tuning_size=test", "tune.enabled=true",
                   "+tune.grid.ks=[2,4,8]"])
    results = run(cfg, output_dir=tmp_path)
    assert results["method"]["name"] == cls.__name__
    for d in ("t2i", "i2t"):
        tuned = results["tuning"][d]
        assert tuned["best"]["k"] in (2, 4, 8) and len(tuned["grid"]) == 3
        assert f"{d}/R@1" in results["metrics"]["method"]
    assert results["objective"]["split"] == "tuning"


def test_tuning_k_with_params_equals_fresh_fits(hub_retrieval):
    """The one-fit k search scores each k as a fresh fit with that k would."""
    from nnn.data.base import EmbeddingSet
    from nnn.tuning import tune
    from nnn.task import RetrievalTask

    gallery, queries, refs, _ = hub_retrieval(n_pairs=60, n_refs=150, d=16)
    tuning = EmbeddingSet("tuning", gallery, queries, np.arange(60))
    bank = EmbeddingSet("refs", refs, refs, np.arange(150))
    result = tune("ls", tuning, bank, "t2i", ks=[1, 3, 9], variant="nicdm")
    task = RetrievalTask.from_sets(tuning, bank, "t2i")
    for point in result.grid:
        fresh = task.fit(LocalScaling(k=point["k"], variant="nicdm"))
        assert task.recall_at_1(fresh) == point["R@1"]
    assert result.method_kwargs == {"variant": "nicdm"}
    with pytest.raises(ValueError, match=r"\['k_max'\] are set by the tuner"):
        tune("mp", tuning, bank, ks=[2], k_max=8)
