"""DN against a float64 reference: (q - lam mean(query_bank)) . (r - lam mean(gallery_bank))."""

import numpy as np
import pytest

from nnn.methods import DN
from conftest import unit_rows
from tolerances import assert_topk_ids, dot_atol

N_G, N_QB, N_GB, N_Q, D = 37, 131, 59, 23, 16
# float32 error of a DN score: both centred rows have norm <= 2 (|lam| <= 1), so the dot product
# is off by dot_atol(D, 4) = 8.1e-6, and centring rounds each side's entries (< 1e-6 more)
SCORE_ATOL = 1e-5
assert SCORE_ATOL > dot_atol(D, 4) + 1e-6


@pytest.fixture(scope="module")
def data():
    """Gallery, banks and queries with a shared offset per modality, as real embeddings have."""
    rng = np.random.default_rng(1)
    text_mean, image_mean = rng.standard_normal(D), rng.standard_normal(D)
    g = unit_rows(image_mean + rng.standard_normal((N_G, D)))
    gb = unit_rows(image_mean + rng.standard_normal((N_GB, D)))
    qb = unit_rows(text_mean + rng.standard_normal((N_QB, D)))
    q = unit_rows(text_mean + rng.standard_normal((N_Q, D)))
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
    b = DN().fit(g, query_bank=qb, gallery_bank=unit_rows(gb[::-3] + 0.3))
    # b's exact scores are a's plus a per-query constant; each side rounds by SCORE_ATOL
    assert_topk_ids(b.search(q, N_G)[1], a.score(q), atol=4 * SCORE_ATOL)
    assert not np.allclose(a.score(q), b.score(q))


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), "half", None])
def test_bad_lam(lam):
    with pytest.raises(ValueError, match="lam"):
        DN(lam=lam)
