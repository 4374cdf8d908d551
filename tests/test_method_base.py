"""The estimator contract shared by every method (nnn/methods/base.py)."""

from __future__ import annotations

import numpy as np
import pytest

from nnn.methods import NNN, Identity


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fitted_state_does_not_alias_the_callers_gallery():
    rng = np.random.default_rng(0)
    g, refs, q = _unit(rng, 9, 5), _unit(rng, 13, 5), _unit(rng, 4, 5)
    m = NNN(k=3, alpha=0.75).fit(g, query_bank=refs)
    before = m.score(q)
    g[:] = 0.0  # the caller reuses its buffer
    np.testing.assert_array_equal(m.score(q), before)


def test_misspelt_device_fails_at_construction():
    with pytest.raises(ValueError, match="device='tpu' is not a device"):
        Identity(device="tpu")


def test_top_k_larger_than_gallery_names_both():
    rng = np.random.default_rng(1)
    m = Identity().fit(_unit(rng, 4, 3))
    with pytest.raises(ValueError, match=r"top_k=5 is larger than the gallery size \(4\); use top_k <= 4$"):
        m.search(_unit(rng, 2, 3), top_k=5)
