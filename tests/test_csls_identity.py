"""CSLS and Identity against float64 references from the formulas; CSLS ranks like NNN(alpha=0.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnn.methods import CSLS, NNN, Identity
from tolerances import EPS32, assert_topk_ids, dot_atol

N_G, N_R, N_Q, D = 67, 1031, 23, 10


def mean_top(s, k):
    """Mean of the k largest values of each row of s (float64)."""
    return np.sort(s, axis=1)[:, ::-1][:, :k].mean(axis=1)


def ref_csls(queries, gallery, bank, k):
    q, g, b = (a.astype(np.float64) for a in (queries, gallery, bank))
    s = q @ g.T                                                       # (n_q, n_g)
    r_gallery = mean_top(g @ b.T, k)                                  # (n_g,)
    r_query = mean_top(s, k)                                          # (n_q,)
    return 2 * s - r_gallery[None, :] - r_query[:, None]


def csls_atol(k):
    """Worst-case float32 error of CSLS scores of unit vectors: s (twice), r_B(r) and r_B(q) are
    each off by dot_atol(D) (+ EPS32: r_B(r) is rounded to float32), the float32 mean of k values
    by k * EPS32, and the three subtractions round values below 4 by 4 * EPS32 each."""
    return 4 * dot_atol(D) + (k + 1 + 3 * 4) * EPS32


@pytest.fixture
def data(unit):
    return unit(N_G, D), unit(N_R, D), unit(N_Q, D)


@pytest.mark.parametrize("k,ref_batch_size", [(1, None), (10, 400), (67, None)])
def test_csls_matches_reference(data, k, ref_batch_size):
    g, r, q = data
    m = CSLS(k=k, batch_size=6, ref_batch_size=ref_batch_size,
             memory_budget_mb=(5 * N_R * 4 + 1) / 2**20).fit(g, query_bank=r)
    want = ref_csls(q, g, r, k)
    # float32 dot products, a float64 mean, one rounding to float32
    np.testing.assert_allclose(m.neighbourhood_, mean_top(g.astype(np.float64) @ r.T, k),
                               rtol=0, atol=dot_atol(D) + EPS32)
    np.testing.assert_allclose(m.score(q), want, rtol=0, atol=csls_atol(k))
    scores, ids = m.search(torch.from_numpy(q), top_k=7)
    assert_topk_ids(ids, want, atol=2 * csls_atol(k))  # chosen by scores off by csls_atol(k)


@pytest.mark.parametrize("k", [1, 8, 30])
def test_csls_ranks_like_nnn_with_alpha_half(data, k):
    g, r, q = data
    csls = CSLS(k=k).fit(g, query_bank=r).score(q)
    nnn = NNN(k=k, alpha=0.5).fit(g, query_bank=r).score(q)
    # NNN's float32 scores: s and its bias each off by dot_atol(D), two roundings
    nnn_atol = 2 * dot_atol(D) + 2 * EPS32
    # the same order up to near-ties (CSLS / 2 and NNN are each off by their rounding)
    assert_topk_ids(np.argsort(-csls, axis=1), nnn, atol=2 * (csls_atol(k) / 2 + nnn_atol))
    # and exactly: CSLS = 2 * NNN(alpha=0.5) - r_B(q), a per-query constant
    shift = 2 * nnn - csls
    np.testing.assert_allclose(shift, shift[:, :1].repeat(N_G, axis=1), rtol=0,
                               atol=2 * (2 * nnn_atol + csls_atol(k)))  # both columns' rounding


@pytest.mark.parametrize("kwargs,fit_kwargs,match", [
    (dict(k=68), dict(), r"k=68 is larger than the gallery \(67 rows\)"),
    (dict(k=5), dict(query_bank=None), "CSLS needs query_bank="),
    (dict(k=0), None, "k must be a positive integer, got 0"),
    (dict(dtype="float16"), None, "dtype='float16' needs a CUDA device"),
])
def test_csls_bad_input(data, kwargs, fit_kwargs, match):
    g, r, _ = data
    with pytest.raises(ValueError, match=match):
        CSLS(**kwargs).fit(g, **{"query_bank": r, **(fit_kwargs or {})})


def test_csls_k_larger_than_bank(data):
    g, r, _ = data
    with pytest.raises(ValueError, match=r"k=12 is larger than the query_bank \(11 rows\)"):
        CSLS(k=12).fit(g, query_bank=r[:11])


def test_identity_is_the_plain_dot_product(data):
    g, r, q = data
    m = Identity(batch_size=5).fit(torch.from_numpy(g))
    want = q.astype(np.float64) @ g.T.astype(np.float64)
    np.testing.assert_allclose(m.score(q), want, rtol=0, atol=dot_atol(D))
    scores, ids = m.search(q, top_k=4)
    assert_topk_ids(ids, want, atol=2 * dot_atol(D))
    # banks are optional and do not change anything; another batch size (here 4096 against 5)
    # may change BLAS's summation order, so the scores agree to float32 rounding
    np.testing.assert_allclose(Identity().fit(g, query_bank=r).score(q), m.score(q), rtol=0,
                               atol=dot_atol(D))
    with pytest.raises(ValueError, match="queries has dimension 3"):
        m.score(q[:, :3])
