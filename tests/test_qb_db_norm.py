"""QBNorm and DBNorm against dense float64 references written from the paper's formulas.

Rank-equivalent score compared throughout: the log of the (gated) inverted-softmax product, each
factor times its bank size (a constant, removed so that small betas stay exact), e.g. QB-Norm
log n(q, r) + log n_b = beta s(q, r) - log mean_{b in B_q} exp(beta s(b, r)); raw s(q, r) for
DIS rows that are not gated. DualDIS's paper rule (a gated-off factor is s(q, r)) is compared by
ranking against the float64 product itself, which may be <= 0. Banks are streamed in chunks of 7 rows (sizes are not
multiples of 7), so many chunk boundaries are crossed.
"""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from nnn.methods import DBNorm, QBNorm
from nnn.methods._bank_stats import bank_stats, chunk_rows
from conftest import unit_rows
from tolerances import assert_topk_ids, dot_atol

N_G, N_QB, N_GB, N_Q, D = 53, 211, 103, 41, 24
CHUNK = 7
#: a memory budget (MiB) that gives CHUNK-row bank chunks for a gallery of N_G
BUDGET = (CHUNK + 0.5) * ((2 * N_G + D) * 4 + 12) / 2**20
TOP = 5


@pytest.fixture(scope="module")
def data():
    """Gallery (N_G, D); banks clustered on the first 30 / last 20 gallery items, so that with
    activation_k=1 the activation sets are partial and DIS gates some queries but not others."""
    rng = np.random.default_rng(0)
    g = unit_rows(rng.standard_normal((N_G, D)))
    qb = unit_rows(g[rng.integers(0, 30, N_QB)] + 0.03 * rng.standard_normal((N_QB, D)))
    gb = unit_rows(g[rng.integers(N_G - 20, N_G, N_GB)] + 0.03 * rng.standard_normal((N_GB, D)))
    q = unit_rows(g[rng.integers(0, N_G, N_Q)] + 0.1 * rng.standard_normal((N_Q, D)))
    return g, qb, gb, q


# -- float64 references, written from the formulas --------------------------------------------
def sim(a, b):
    return a.astype(np.float64) @ b.astype(np.float64).T


def activation_ref(bank, g, k):
    """Gallery items in the top-k of at least one bank row -> (n_g,) bool."""
    act = np.zeros(len(g), bool)
    for row in sim(bank, g):
        act[np.argsort(-row)[:k]] = True
    return act


def gate_ref(q, g, act):
    """Queries whose raw top-1 gallery item is activated -> (n_q,) bool."""
    return act[sim(q, g).argmax(axis=1)]


def log_mean_ref(bank, g, beta):
    """log mean_b exp(beta s(b, r)) -> (n_g,): the log-normaliser less log n_b."""
    return logsumexp(beta * sim(bank, g), axis=0) - np.log(len(bank))


def factor_ref(q, g, bank, beta, gate=None, off="exp"):
    """n_b exp(beta s(q,r)) / sum_b exp(beta s(b,r)) on gated rows; on the others
    exp(beta s(q,r)) (``off="exp"``) or s(q, r) (``off="raw"``, the paper's DualDIS)."""
    normed = np.exp(beta * sim(q, g) - log_mean_ref(bank, g, beta))
    if gate is None:
        return normed
    return np.where(gate[:, None], normed, np.exp(beta * sim(q, g)) if off == "exp" else sim(q, g))


def qb_log_ref(q, g, qb, beta, dynamic=False, k=1):
    gate = gate_ref(q, g, activation_ref(qb, g, k)) if dynamic else None
    normed = np.log(factor_ref(q, g, qb, beta))
    return normed if gate is None else np.where(gate[:, None], normed, sim(q, g))


def db_product_ref(q, g, qb, gb, bq, bg, dynamic=False, k=1, off="exp"):
    gq = gate_ref(q, g, activation_ref(qb, g, k)) if dynamic else None
    gg = gate_ref(q, g, activation_ref(gb, g, k)) if dynamic else None
    return factor_ref(q, g, qb, bq, gq, off) * factor_ref(q, g, gb, bg, gg, off)


def db_log_ref(q, g, qb, gb, bq, bg, dynamic=False, k=1):
    return np.log(db_product_ref(q, g, qb, gb, bq, bg, dynamic, k))


def assert_orders_like(scores, ref, rtol):
    """Each row of ``scores`` sorts the gallery as the float64 ``ref`` does, up to ties: along
    the order of ``scores`` the reference never increases by more than ``rtol`` x its row's
    largest magnitude (float32 rounding may swap near-equal items, nothing else)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    along = np.take_along_axis(ref, order, axis=1)
    slack = rtol * np.abs(ref).max(axis=1, keepdims=True)
    assert (np.diff(along, axis=1) <= slack).all()


def check_against(model, q, ref, atol):
    out = model.score(q)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=atol, rtol=0)
    vals, ids = model.search(q, TOP)
    assert_topk_ids(ids, ref, atol=2 * atol)  # chosen by scores off by atol
    np.testing.assert_allclose(vals, np.take_along_axis(ref, ids, axis=1), atol=atol, rtol=0)


def test_budget_gives_many_uneven_chunks():
    assert chunk_rows(N_G, D, BUDGET) == CHUNK
    assert N_QB % CHUNK and N_GB % CHUNK and N_QB // CHUNK > 10


# -- bank statistics: many betas from one pass -------------------------------------------------
class CountingBank(np.ndarray):
    """A bank that counts the rows read from it (slices of it), to count streamed passes."""

    rows_read = 0

    def __getitem__(self, key):
        out = super().__getitem__(key)
        CountingBank.rows_read += len(out)
        return np.asarray(out)


def test_bank_stats_many_betas_in_one_pass_match_float64(data):
    g, qb, _, _ = data
    betas = (0.001, 0.5, 20.0, 100.0, 400.0)
    bank = qb.view(CountingBank)
    CountingBank.rows_read = 0
    stats = bank_stats(bank, torch.from_numpy(g), betas=betas, activation_k=3,
                       memory_budget_mb=BUDGET, progress=False)
    assert CountingBank.rows_read == N_QB           # every bank row streamed exactly once
    assert sorted(stats.log_norms) == list(betas)
    np.testing.assert_array_equal(stats.activation, activation_ref(qb, g, 3))
    for beta in betas:
        got = stats.log_norm(beta)
        assert got.dtype == np.float64 and got.shape == (N_G,) and np.isfinite(got).all()
        # a weighted mean of similarities each off by dot_atol(D) (float32, any CPU), times beta
        np.testing.assert_allclose(got, logsumexp(beta * sim(qb, g), axis=0), rtol=0,
                                   atol=1e-6 + beta * dot_atol(D))
        # a beta's value does not depend on the other betas of the pass: equal to a one-beta pass
        alone = bank_stats(qb, torch.from_numpy(g), betas=[beta], activation_k=3,
                           memory_budget_mb=BUDGET, progress=False)
        np.testing.assert_array_equal(alone.log_norm(beta), got)
        np.testing.assert_array_equal(alone.activation, stats.activation)


def test_bank_stats_bad_betas(data):
    g, qb, _, _ = data
    for betas in ([], [0.0, 1.0], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="betas must be"):
            bank_stats(qb, torch.from_numpy(g), betas=betas, activation_k=1, memory_budget_mb=1)
    stats = bank_stats(qb, torch.from_numpy(g), betas=[1.0, 1.0], activation_k=1,
                       memory_budget_mb=1)
    assert list(stats.log_norms) == [1.0]
    with pytest.raises(ValueError, match=r"beta=2.0 was not fitted \(fitted: \[1.0\]\)"):
        stats.log_norm(2.0)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_bank_stats_cpu_chunks_and_workers_match_float64(data, workers, monkeypatch):
    """CPU chunks capped below the memory budget (cache-sized) and dealt to 1-3 one-thread
    workers: the same float64 references at betas 0.001 ... 400, the same activation set, the
    caller's thread count restored, and each beta's value still that of a one-beta pass."""
    import nnn.methods._bank_stats as bs

    g, qb, _, _ = data
    monkeypatch.setattr(bs, "_CPU_CHUNK_SCORES", 5 * N_G)     # 5-row chunks: 43 of them
    monkeypatch.setattr(bs, "_CPU_MIN_ROWS", 1)
    betas = (0.001, 0.02, 0.5, 3.0, 20.0, 100.0, 400.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(workers)
    try:
        stats = bank_stats(qb, torch.from_numpy(g), betas=betas, activation_k=2,
                           memory_budget_mb=64, progress=False)
        assert torch.get_num_threads() == workers
        alone = {b: bank_stats(qb, torch.from_numpy(g), betas=[b], activation_k=2,
                               memory_budget_mb=64, progress=False) for b in betas}
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(stats.activation, activation_ref(qb, g, 2))
    for beta in betas:
        np.testing.assert_allclose(stats.log_norm(beta), logsumexp(beta * sim(qb, g), axis=0),
                                   rtol=0, atol=1e-6 + beta * dot_atol(D))
        np.testing.assert_array_equal(alone[beta].log_norm(beta), stats.log_norm(beta))


def test_series_terms_bound_the_truncation():
    """Small-beta chunks sum exp's series to K terms: K is the smallest with x^K / (K+1)! <=
    2^-26, and the series so cut is within x 2^-26 of exp - 1 on [-x, 0] (float64 check)."""
    import math

    from nnn.methods._bank_stats import _series_terms

    for x in (1e-6, 0.001, 0.03, 0.1, 0.5, 0.9, 1.0):
        k = _series_terms(x)
        assert x**k / math.factorial(k + 1) <= 2.0**-26
        assert k == 1 or x ** (k - 1) / math.factorial(k) > 2.0**-26
        y = -np.linspace(0, x, 101)
        cut = sum(y**j / math.factorial(j) for j in range(1, k + 1))
        assert np.abs(cut - np.expm1(y)).max() <= x * 2.0**-26


def test_activation_counts_ties_with_the_kth():
    """A bank row equally similar to two gallery items (s = 1/sqrt(2) exactly, both) puts
    both in the activation set, at k = 1; at k = 2 the tie for second place counts too."""
    g = np.eye(4, dtype=np.float32)
    bank = np.array([[0.5, 0.5, 0.0, 0.0], [0.6, 0.0, 0.3, 0.3]], dtype=np.float32)
    act = [bank_stats(bank, torch.from_numpy(g), betas=[1.0], activation_k=k,
                      memory_budget_mb=1, progress=False).activation for k in (1, 2)]
    np.testing.assert_array_equal(act[0], [True, True, False, False])
    np.testing.assert_array_equal(act[1], [True, True, True, True])


@pytest.mark.parametrize("dynamic", [False, True])
def test_qbnorm_with_params_equals_fresh_fit_without_a_pass(data, dynamic):
    g, qb, _, q = data
    m = QBNorm(beta=5.0, beta_grid=(20.0, 60.0), dynamic=dynamic, memory_budget_mb=BUDGET)
    m.fit(g, query_bank=qb)
    before = m.score(q)
    for beta in (60.0, 20.0, 5.0):
        other = m.with_params(beta=beta)
        fresh = QBNorm(beta=beta, dynamic=dynamic, memory_budget_mb=BUDGET).fit(g, query_bank=qb)
        assert other.beta == beta and other.query_stats_ is m.query_stats_
        np.testing.assert_array_equal(other.log_norm_query_, fresh.log_norm_query_)
        np.testing.assert_array_equal(other.score(q), fresh.score(q))
    np.testing.assert_array_equal(m.score(q), before)                 # the original is unchanged
    with pytest.raises(ValueError, match="beta=7.0 was not fitted"):
        m.with_params(beta=7.0)
    with pytest.raises(ValueError, match="beta=0"):
        m.with_params(beta=0.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        QBNorm().with_params(beta=20.0)


@pytest.mark.parametrize("dynamic", [False, True])
def test_dbnorm_with_params_equals_fresh_fit_without_a_pass(data, dynamic):
    g, qb, gb, q = data
    m = DBNorm(beta_query=0.0, beta_gallery=0.5, beta_query_grid=(2.0, 20.0),
               beta_gallery_grid=(10.0,), dynamic=dynamic, memory_budget_mb=BUDGET)
    assert m.requires == ("query_bank", "gallery_bank")   # the query grid needs the query bank
    m.fit(g, query_bank=qb, gallery_bank=gb)
    for bq, bg in ((20.0, 10.0), (2.0, 0.0), (0.0, 10.0), (20.0, 0.5)):
        other = m.with_params(beta_query=bq, beta_gallery=bg)
        fresh = DBNorm(beta_query=bq, beta_gallery=bg, dynamic=dynamic, memory_budget_mb=BUDGET)
        fresh.fit(g, query_bank=qb, gallery_bank=gb)
        for name in ("log_norm_query_", "log_norm_gallery_", "activation_query_",
                     "activation_gallery_"):
            a, b = getattr(other, name), getattr(fresh, name)
            assert (a is None) == (b is None), name
            if a is not None:
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(other.score(q), fresh.score(q))
    assert m.with_params(beta_query=2.0).beta_gallery == 0.5           # None keeps the value
    with pytest.raises(ValueError, match="beta_gallery=3.0 was not fitted"):
        m.with_params(beta_gallery=3.0)
    with pytest.raises(ValueError, match="constant"):
        m.with_params(beta_query=0.0, beta_gallery=0.0)
    qb_only = DBNorm(beta_query=2.0, beta_gallery=0.0, memory_budget_mb=BUDGET)
    qb_only.fit(g, query_bank=qb)
    with pytest.raises(ValueError, match="needs the gallery bank"):
        qb_only.with_params(beta_gallery=10.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        DBNorm(beta_query=1.0, beta_gallery=1.0).with_params(beta_query=2.0)


# -- QBNorm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.5, 5.0, 20.0])
def test_qbnorm_matches_dense_reference(data, beta):
    g, qb, _, q = data
    m = QBNorm(beta=beta, memory_budget_mb=BUDGET).fit(g, query_bank=qb)
    np.testing.assert_allclose(m.log_norm_query_, np.log(np.exp(beta * sim(qb, g)).sum(axis=0)),
                               rtol=1e-6, atol=0)
    check_against(m, q, qb_log_ref(q, g, qb, beta), atol=2e-5)


@pytest.mark.parametrize("beta", [100.0, 1000.0])
def test_qbnorm_large_beta_is_stable(data, beta):
    g, qb, _, q = data
    m = QBNorm(beta=beta, memory_budget_mb=BUDGET).fit(g, query_bank=qb)
    log_z = logsumexp(beta * sim(qb, g), axis=0)
    assert np.isfinite(m.log_norm_query_).all()
    np.testing.assert_allclose(m.log_norm_query_, log_z, rtol=0, atol=2e-5 * beta)
    check_against(m, q, beta * sim(q, g) - log_mean_ref(qb, g, beta), atol=2e-5 * beta)


@pytest.mark.parametrize("k", [1, 3])
def test_qbnorm_dynamic_matches_reference(data, k):
    g, qb, _, q = data
    act = activation_ref(qb, g, k)
    gate = gate_ref(q, g, act)
    assert gate.any() and not gate.all(), "the data must gate some queries and not others"
    m = QBNorm(beta=20.0, dynamic=True, activation_k=k, memory_budget_mb=BUDGET)
    m.fit(g, query_bank=qb)
    np.testing.assert_array_equal(m.activation_query_, act)
    check_against(m, q, qb_log_ref(q, g, qb, 20.0, dynamic=True, k=k), atol=2e-5)


def basis(*rows):
    """Unit vectors from coefficient rows over the standard basis of R^5."""
    return unit_rows(np.array(rows, dtype=np.float64))


def test_dis_gating_constructed_case():
    """Gallery = e0..e4; the query bank sits at e0 and e1, the gallery bank at e2, so the
    activation sets are {0, 1} and {2}. Query 0 (top-1 e0) is gated for the query-bank factor
    only, query 1 (top-1 e2) for the gallery-bank factor only, query 2 (top-1 e4) for neither."""
    g = np.eye(5, dtype=np.float32)
    qb = basis([1, 0, 0, .2, 0], [0, 1, 0, .2, 0], [1, .1, 0, 0, 0])
    gb = basis([0, 0, 1, .3, 0], [0, .1, 1, 0, 0])
    q = basis([1, 0, .3, 0, 0], [0, 0, 1, 0, .2], [0, .1, 0, 0, 1])
    qbn = QBNorm(beta=5.0, dynamic=True).fit(g, query_bank=qb)
    np.testing.assert_array_equal(qbn.activation_query_, [True, True, False, False, False])
    s = sim(q, g)
    out = qbn.score(q)
    np.testing.assert_allclose(out[0], 5.0 * s[0] - log_mean_ref(qb, g, 5.0), atol=1e-5)
    np.testing.assert_allclose(out[1:], s[1:], atol=1e-6)  # ungated rows keep raw s

    dbn = DBNorm(beta_query=5.0, beta_gallery=3.0, dynamic=True, gate="exp")
    dbn.fit(g, query_bank=qb, gallery_bank=gb)
    np.testing.assert_array_equal(dbn.activation_gallery_, [False, False, True, False, False])
    lm_q, lm_g = log_mean_ref(qb, g, 5.0), log_mean_ref(gb, g, 3.0)
    expected = 8.0 * s - np.stack([lm_q, lm_g, np.zeros(5)])
    np.testing.assert_allclose(dbn.score(q), expected, atol=1e-5)
    np.testing.assert_allclose(dbn.score(q), db_log_ref(q, g, qb, gb, 5.0, 3.0, dynamic=True),
                               atol=1e-5)
    # the paper's rule: a gated-off factor is s(q, r); the rows rank by the product
    raw = DBNorm(beta_query=5.0, beta_gallery=3.0, dynamic=True).fit(
        g, query_bank=qb, gallery_bank=gb)
    product = np.stack([s[0] * np.exp(5.0 * s[0] - lm_q), s[1] * np.exp(3.0 * s[1] - lm_g),
                        s[2] ** 2])
    assert_orders_like(raw.score(q), product, rtol=1e-6)   # (s = 0 ties abound here)


def test_sign_log_rows_with_zero_similarities_keep_their_resolution():
    """A zero similarity (P = 0) scores 0 and does not set the row's minimum: the other items'
    scores start at 1, as without it (log|0| clamped to -87 would add 87 to them, where float32
    resolves ~1e-5 instead of ~1e-7), and a row of zeros scores 0 throughout."""
    import torch

    s = torch.tensor([[0.3, 0.0, -0.2, 0.3 + 1e-6], [0.0, 0.0, 0.0, 0.0]])
    x = torch.tensor([[1.0, 2.0, 0.5, 1.0], [1.0, 2.0, 3.0, 4.0]])
    for n_off in (1, 2):
        out = x.clone()
        DBNorm._sign_log(out, DBNorm._sign_log_terms(s, n_off))
        s64, x64 = s.double().numpy(), x.double().numpy()
        L = n_off * np.log(np.abs(s64[0, [0, 2, 3]])) + x64[0, [0, 2, 3]]
        sign = np.sign(s64[0, [0, 2, 3]]) ** n_off
        np.testing.assert_allclose(out[0, [0, 2, 3]].numpy(), sign * (L - L.min() + 1),
                                   rtol=0, atol=1e-6)
        assert out[0, 1] == 0 and (out[1] == 0).all()
        assert out[0, 3] > out[0, 0]      # 1e-6 apart in s: still ordered


# -- DBNorm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bq,bg", [(20.0, 10.0), (1.0, 30.0), (0.5, 0.05)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_dbnorm_matches_dense_reference(data, bq, bg, dynamic):
    g, qb, gb, q = data
    if dynamic:  # the data gates each factor for some queries where the other is not gated
        gq = gate_ref(q, g, activation_ref(qb, g, 1))
        gg = gate_ref(q, g, activation_ref(gb, g, 1))
        assert (gq & ~gg).any() and (gg & ~gq).any() and (~gq & ~gg).any()
    m = DBNorm(beta_query=bq, beta_gallery=bg, dynamic=dynamic, memory_budget_mb=BUDGET)
    m.fit(g, query_bank=qb, gallery_bank=gb)
    np.testing.assert_allclose(m.log_norm_gallery_, np.log(np.exp(bg * sim(gb, g)).sum(axis=0)),
                               rtol=1e-6, atol=0)
    np.testing.assert_array_equal(m.activation_gallery_, activation_ref(gb, g, 1))
    if not dynamic:
        check_against(m, q, db_log_ref(q, g, qb, gb, bq, bg), atol=3e-5)
        return
    exp_rule = DBNorm(beta_query=bq, beta_gallery=bg, dynamic=True, gate="exp",
                      memory_budget_mb=BUDGET).fit(g, query_bank=qb, gallery_bank=gb)
    check_against(exp_rule, q, db_log_ref(q, g, qb, gb, bq, bg, dynamic=True), atol=3e-5)
    # the paper's rule (default): rank by the float64 product, some of whose factors are raw s
    product = db_product_ref(q, g, qb, gb, bq, bg, dynamic=True, off="raw")
    assert (product < 0).any() and (product > 0).any()   # the sign handling is exercised
    out = m.score(q)
    assert np.isfinite(out).all()
    # float32 rounding of s (|s| <= 1) and of the log-domain key (|key| <~ 60): ~1e-5 relative
    assert_orders_like(out, product, rtol=1e-5)
    row_scale = np.abs(product).max(axis=1, keepdims=True)  # the same relative slack as above
    assert_topk_ids(m.search(q, TOP)[1], product / row_scale, atol=2e-5)
    both_on = gq & gg   # rows with no raw factor keep the log-score
    np.testing.assert_allclose(out[both_on], np.log(product[both_on]), atol=3e-5, rtol=0)


@pytest.mark.parametrize("beta", [100.0, 400.0])
def test_dbnorm_large_beta_is_stable(data, beta):
    g, qb, gb, q = data
    m = DBNorm(beta_query=beta, beta_gallery=beta / 2, memory_budget_mb=BUDGET)
    m.fit(g, query_bank=qb, gallery_bank=gb)
    ref = (1.5 * beta * sim(q, g) - log_mean_ref(qb, g, beta)
           - log_mean_ref(gb, g, beta / 2))
    check_against(m, q, ref, atol=4e-5 * beta)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("pass_gallery_bank", [False, True])
def test_qbnorm_equals_dbnorm_with_zero_gallery_beta(data, dynamic, pass_gallery_bank):
    g, qb, gb, q = data
    qbn = QBNorm(beta=20.0, dynamic=dynamic, memory_budget_mb=BUDGET).fit(g, query_bank=qb)
    dbn = DBNorm(beta_query=20.0, beta_gallery=0.0, dynamic=dynamic, memory_budget_mb=BUDGET)
    assert dbn.requires == ("query_bank",) and dbn.gate == "raw"  # DIS keeps s: the raw rule
    dbn.fit(g, query_bank=qb, gallery_bank=gb if pass_gallery_bank else None)
    assert dbn.log_norm_gallery_ is None and dbn.activation_gallery_ is None
    np.testing.assert_array_equal(dbn.log_norm_query_, qbn.log_norm_query_)
    # the same ranking up to near-ties: each side's scores are off by <= 2 * 20 * dot_atol(D)
    assert_topk_ids(dbn.search(q, N_G)[1], qbn.score(q), atol=4 * 20.0 * dot_atol(D))
    if not dynamic:
        np.testing.assert_allclose(qbn.score(q), dbn.score(q), atol=1e-6)


def test_dbnorm_zero_query_beta_is_qbnorm_over_gallery_bank(data):
    g, _, gb, q = data
    dbn = DBNorm(beta_query=0.0, beta_gallery=15.0, memory_budget_mb=BUDGET)
    assert dbn.requires == ("gallery_bank",)
    dbn.fit(g, gallery_bank=gb)
    qbn = QBNorm(beta=15.0, memory_budget_mb=BUDGET).fit(g, query_bank=gb)
    np.testing.assert_allclose(dbn.score(q), qbn.score(q), atol=1e-6)


# -- small betas with a COCO-sized bank ---------------------------------------------------------
N_BIG, D_BIG, N_G_BIG, N_Q_BIG = 118_350, 16, 101, 67
#: MiB giving bank chunks of 18,979 rows for this gallery: 7 chunks, the last one partial
BIG_BUDGET = 16


@pytest.fixture(scope="module")
def big_bank():
    """A 118,350-row bank (COCO's 20% of training captions) around a common direction, so that
    log mean_b exp(beta s(b, r)) differs across r, a gallery of 101, 67 queries, d = 16, and
    the float64 gallery x bank similarities (96 MB, gallery rows contiguous for fast sums)."""
    rng = np.random.default_rng(7)
    mu = rng.standard_normal(D_BIG)
    bank = unit_rows(mu + 1.5 * rng.standard_normal((N_BIG, D_BIG)))
    g = unit_rows(rng.standard_normal((N_G_BIG, D_BIG)))
    return g, bank, unit_rows(rng.standard_normal((N_Q_BIG, D_BIG))), sim(g, bank)


@pytest.mark.parametrize("beta", [0.001, 0.03])
def test_small_beta_big_bank_ranks_like_float64(big_bank, beta):
    """At beta = 0.001 the signal beta * (s(q,r) - mean_b s(b,r)) is ~1e-3 while log n_b = 11.7:
    a float32 normaliser (ulp 1e-6 at 11.7) used to reorder items; now the ranking agrees with
    float64. Tie-aware: the order may swap only items whose float64 scores differ by less than
    1e-5 x the row's largest |score|, i.e. similarities within ~1e-5 of each other (float32 s
    is within ~1e-7 for d = 16, the normaliser within ~e * 2^-24 * (log2(c) + 2) * beta * 2;
    _bank_stats docstring)."""
    g, bank, q, sims = big_bank
    assert N_BIG // chunk_rows(N_G_BIG, D_BIG, BIG_BUDGET) == 6

    def log_mean(b):  # float64 log-mean-exp along the bank, with the max factored out
        top = b * sims.max(axis=1)
        return top + np.log(np.exp(b * sims - top[:, None]).mean(axis=1))

    qbn = QBNorm(beta=beta, memory_budget_mb=BIG_BUDGET, progress=False).fit(g, query_bank=bank)
    np.testing.assert_allclose(qbn.query_stats_.log_mean(beta), log_mean(beta), rtol=0,
                               atol=1e-4 * beta)
    ref = beta * sim(q, g) - log_mean(beta)
    out = qbn.score(q)
    assert_orders_like(out, ref, rtol=1e-5)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * beta)
    # DualIS, the same bank on both sides (both normalisers at small beta)
    dbn = DBNorm(beta_query=beta, beta_gallery=2 * beta, memory_budget_mb=BIG_BUDGET,
                 progress=False).fit(g, query_bank=bank, gallery_bank=bank)
    ref = 3 * beta * sim(q, g) - log_mean(beta) - log_mean(2 * beta)
    assert_orders_like(dbn.score(q), ref, rtol=1e-5)


# -- inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta=-1.0), "beta"), (dict(beta=float("nan")), "beta"), (dict(beta=float("inf")), "beta"),
    (dict(beta=0.0), "beta=0"), (dict(beta="x"), "beta"),
    (dict(activation_k=0), "activation_k"), (dict(activation_k=1.5), "activation_k"),
    (dict(activation_k=True), "activation_k"),
    (dict(memory_budget_mb=0), "memory_budget_mb"),
    (dict(memory_budget_mb=float("nan")), "memory_budget_mb"),
    (dict(beta_grid=(1.0, 0.0)), "beta_grid must hold betas > 0"),
    (dict(beta_grid=(1.0, -2.0)), "beta_grid"),
])
def test_qbnorm_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QBNorm(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta_query=-1.0, beta_gallery=1.0), "beta_query"),
    (dict(beta_query=1.0, beta_gallery=float("nan")), "beta_gallery"),
    (dict(beta_query=0.0, beta_gallery=0.0), "constant"),
    (dict(beta_query=1.0, beta_gallery=1.0, activation_k=-2), "activation_k"),
    (dict(beta_query=1.0, beta_gallery=1.0, beta_gallery_grid=[0.0]), "beta_gallery_grid"),
    (dict(beta_query=1.0, beta_gallery=1.0, beta_query_grid=["x"]), "beta_query_grid"),
    (dict(beta_query=1.0, beta_gallery=1.0, dynamic=True, gate="softmax"),
     r"gate must be one of \('raw', 'exp'\).*got 'softmax'"),
])
def test_dbnorm_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DBNorm(**kwargs)


def test_bad_fit_values(data):
    """QBNorm's own fit checks (the shared ones: tests/test_method_contract.py)."""
    g, qb, _, _ = data
    with pytest.raises(ValueError, match="activation_k"):
        QBNorm(activation_k=N_G + 1).fit(g, query_bank=qb)
    with pytest.raises(ValueError, match="overflows"):
        QBNorm(beta=1e39).fit(g, query_bank=qb)


# -- real embeddings ---------------------------------------------------------------------------
def test_real_clip_text_to_image_improves(real_flickr):
    """CLIP ViT-L/14 Flickr30k pairs: 600 pairs are the banks, 400 the evaluation split."""
    img = np.load(real_flickr / "image_embeddings.npy")
    txt = np.load(real_flickr / "text_embeddings.npy")
    g, q, qb, gb = img[600:], txt[600:], txt[:600], img[:600]
    truth = np.arange(len(q))

    def r1(ids):
        return (ids[:, 0] == truth).mean()

    base = r1(np.argmax(q @ g.T, axis=1)[:, None])
    # (the paper's DualDIS rule, gate="raw", needs a small gallery beta here: at (50, 5) it scores
    # 81.8 against the baseline's 82.8, matching a float64 product; docs/baselines.md)
    for m in (QBNorm(beta=50.0), QBNorm(beta=50.0, dynamic=True),
              DBNorm(beta_query=50.0, beta_gallery=5.0, dynamic=True, gate="exp"),
              DBNorm(beta_query=50.0, beta_gallery=0.001, dynamic=True)):
        m.fit(g, query_bank=qb, gallery_bank=gb)
        assert r1(m.search(q, 1)[1]) > base + 0.01, m
