"""DN against a float64 reference: (q - lam mean(query_bank)) . (r - lam mean(gallery_bank))."""

import numpy as np
import pytest
import torch

from nnn.methods import DN
from tolerances import assert_topk_ids, dot_atol

N_G, N_QB, N_GB, N_Q, D = 37, 131, 59, 23, 16
# float32 error of a DN score: both centred rows have norm <= 2 (|lam| <= 1), so the dot product
# is off by dot_atol(D, 4) = 8.1e-6, and centring rounds each side's entries (< 1e-6 more)
SCORE_ATOL = 1e-5
assert SCORE_ATOL > dot_atol(D, 4) + 1e-6


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """Gallery, banks and queries with a shared offset per modality, as real embeddings have."""
    rng = np.random.default_rng(1)
    text_mean, image_mean = rng.standard_normal(D), rng.standard_normal(D)
    g = unit(image_mean + rng.standard_normal((N_G, D)))
    gb = unit(image_mean + rng.standard_normal((N_GB, D)))
    qb = unit(text_mean + rng.standard_normal((N_QB, D)))
    q = unit(text_mean + rng.standard_normal((N_Q, D)))
    return g, qb, gb, q


def dn_ref(q, g, qb, gb, lam):
    mu_q = qb.astype(np.float64).sum(axis=0) / len(qb)
    mu_g = gb.astype(np.float64).sum(axis=0) / len(gb)
    return (q.astype(np.float64) - lam * mu_q) @ (g.astype(np.float64) - lam * mu_g).T


@pytest.mark.parametrize("lam", [0.5, 0.0, 1.0, -0.3])
def test_dn_matches_reference(data, lam):
    g, qb, gb, q = data
    m = DN(lam=lam, batch_size=5).fit(g, query_bank=qb, gallery_bank=gb)  # 5 does not divide 23
    np.testing.assert_allclose(m.query_mean_, qb.astype(np.float64).mean(axis=0), atol=1e-7)
    np.testing.assert_allclose(m.gallery_mean_, gb.astype(np.float64).mean(axis=0), atol=1e-7)
    ref = dn_ref(q, g, qb, gb, lam)
    np.testing.assert_allclose(m.score(q), ref, atol=SCORE_ATOL, rtol=0)
    vals, ids = m.search(q, 6)
    assert_topk_ids(ids, ref, atol=2 * SCORE_ATOL)
    np.testing.assert_allclose(vals, np.take_along_axis(ref, ids, axis=1), atol=SCORE_ATOL)


def test_dn_changes_rankings_and_default_lam(data):
    g, qb, gb, q = data
    m = DN().fit(g, query_bank=qb, gallery_bank=gb)
    assert m.lam == 0.5
    assert (m.search(q, 1)[1] != np.argmax(q @ g.T, axis=1)[:, None]).any()


def test_rankings_depend_on_query_bank_only(data):
    """Per query, -lam q.mu_g is a constant, so the gallery bank shifts scores but not ranks."""
    g, qb, gb, q = data
    a = DN().fit(g, query_bank=qb, gallery_bank=gb)
    b = DN().fit(g, query_bank=qb, gallery_bank=unit(gb[::-3] + 0.3))
    # b's exact scores are a's plus a per-query constant; each side rounds by SCORE_ATOL
    assert_topk_ids(b.search(q, N_G)[1], a.score(q), atol=4 * SCORE_ATOL)
    assert not np.allclose(a.score(q), b.score(q))


def test_missing_banks_are_named(data):
    g, qb, gb, _ = data
    with pytest.raises(ValueError, match="gallery_bank"):
        DN().fit(g, query_bank=qb)
    with pytest.raises(ValueError, match="query_bank"):
        DN().fit(g, gallery_bank=gb)


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), "half", None])
def test_bad_lam(lam):
    with pytest.raises(ValueError, match="lam"):
        DN(lam=lam)


def test_keyword_only():
    with pytest.raises(TypeError):
        DN(0.5)


def test_bad_arrays(data):
    g, qb, gb, q = data
    with pytest.raises(ValueError, match="gallery_bank.*dimension"):
        DN().fit(g, query_bank=qb, gallery_bank=gb[:, :3])
    bad = qb.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="query_bank.*NaN"):
        DN().fit(g, query_bank=bad, gallery_bank=gb)
    with pytest.raises(ValueError, match="queries.*dimension"):
        DN().fit(g, query_bank=qb, gallery_bank=gb).score(q[:, 1:])


@pytest.mark.parametrize("normalize", [False, True])
def test_inputs_not_mutated(data, normalize):
    arrays = [x.copy() for x in data]
    before = [x.copy() for x in arrays]
    g, qb, gb, q = arrays
    m = DN(normalize=normalize).fit(g, query_bank=qb, gallery_bank=gb)
    m.score(q)
    m.search(q, 2)
    for x, x0 in zip(arrays, before):
        np.testing.assert_array_equal(x, x0)


def test_torch_inputs_match_numpy(data):
    g, qb, gb, q = data
    t = [torch.from_numpy(x.copy()) for x in data]
    a = DN().fit(g, query_bank=qb, gallery_bank=gb)
    b = DN().fit(t[0], query_bank=t[1], gallery_bank=t[2])
    # the same arithmetic; MKL may still pick another kernel path for differently aligned
    # buffers, so allow float32 rounding
    np.testing.assert_allclose(a.score(q), b.score(t[3]), rtol=0, atol=2 * SCORE_ATOL)
    np.testing.assert_array_equal(t[0].numpy(), g)
