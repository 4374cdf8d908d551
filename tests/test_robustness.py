"""Input checks at the edges of float32: huge finite values, tiny ones, and the normalisation
warning that a run prints once (nnn/_arrays.py, used by every method and dataset)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from nnn._arrays import MAX_ROW_NORM, NotNormalizedWarning, as_matrix
from nnn.data.precomputed import load_embedding_set
from nnn.methods import NNN, Identity


def _unit64(x):
    """The float64 reference: x / ||x|| computed from the formula in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt((x * x).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-25, 1e-40])
def test_normalize_is_exact_for_huge_and_tiny_finite_rows(scale):
    # 1e20**2 overflows float32 (the norm was inf and the row became 0); 1e-25**2 underflows
    # (the norm was 0: "all-zero rows"). 1e-40 is a float32 subnormal.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 7)).astype(np.float32)
    x[[1, 4]] = (x[[1, 4]].astype(np.float64) * scale).astype(np.float32)
    got = as_matrix(x, "gallery", normalize=True)
    assert got.dtype == np.float32
    # float64 division rounded once to float32: each element within half an ulp (2**-24
    # relative) of the float64 reference on the same float32 input; 2**-23 leaves room for the
    # float64 norm's own ~1e-16 error. Holds on any CPU and thread count (no BLAS involved).
    np.testing.assert_allclose(got, _unit64(x), rtol=2.0 ** -23, atol=0)
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0, rtol=1e-5)


def test_unnormalised_rows_that_would_overflow_scores_raise_naming_the_row():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((5, 4)).astype(np.float32)
    g[3] *= np.float32(1e20)
    with pytest.raises(ValueError, match=r"^gallery row 3 has norm [0-9.e+]+; dot products of "
                                         r"rows with norms above 1.84e\+19 overflow float32 to "
                                         r"inf. Pass normalize=True \(run.py: "
                                         r"method.normalize=true, .*nnn-index: --normalize\), or "
                                         r"scale the embeddings down$"):
        Identity().fit(g)
    # just below the bound: accepted (with the usual warning), and every score is finite
    g[3] = g[3] / np.linalg.norm(g[3].astype(np.float64)) * (MAX_ROW_NORM * 0.99)
    with pytest.warns(NotNormalizedWarning):
        scores = Identity().fit(g).score(g)
    assert np.isfinite(scores).all()
    # normalize=True: no error; the huge row scores like its direction (cosine similarity,
    # float32 dot products of unit rows in d=4: within 1e-6 of the float64 reference)
    g[3] *= np.float32(1e10)
    m = Identity(normalize=True).fit(g)
    np.testing.assert_allclose(m.score(g[3:4]), _unit64(g[3:4]) @ _unit64(g).T, atol=1e-6)


def test_a_fit_and_search_sequence_warns_once(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.standard_normal((11, 6)).astype(np.float32) * 3
    text = rng.standard_normal((11, 6)).astype(np.float32) * 3
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "txt.npy", text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # even then: once
        data = load_embedding_set(tmp_path / "img.npy", tmp_path / "txt.npy")
        for direction in ("t2i", "i2t"):
            gallery, queries = ((data.image, data.text) if direction == "t2i"
                                else (data.text, data.image))
            m = NNN(k=3).fit(gallery, query_bank=queries[:5])
            m.score(queries)
            m.search(queries, top_k=2)
            Identity().fit(gallery).search(queries, top_k=2)
    shown = [w for w in caught if issubclass(w.category, NotNormalizedWarning)]
    assert len(shown) == 1, [str(w.message) for w in shown]
    assert "test image embeddings" in str(shown[0].message)
    with pytest.warns(NotNormalizedWarning, match="not L2-normalised"):  # a new block: again
        Identity().fit(data.image)
