"""MP, LS / NICDM and DSL against scikit-hubness's reductions on a one-modality k-NN problem.

With the query bank equal to the gallery (so a gallery item's bank neighbourhood holds itself at
distance 0, as a training point's k-NN list does in scikit-hubness) and every gallery item in
each query's neighbour list, our cross-modal adaptations reduce to scikit-hubness 0.21's
``skhubness.reduction`` classes:

- ``LocalScaling(k)`` (standard / NICDM) uses the (k+1)-th entry of each list (the first is the
  point itself for training points): our ``LocalScaling(k + 1)``; its distance is
  1 - exp(-d^2 / (sigma sigma')) for ours -d^2 / (sigma sigma') (= log(1 - LS)), and d / sqrt(mu mu')
  for ours -d / sqrt(mu mu').
- ``MutualProximity(method="normal")`` over full neighbour lists is 1 - SF_q SF_r with means
  and population stds over all points: our ``MutualProximity(k=None)``, log SF_q + log SF_r.
  (Its ``method="empiric"`` counts the objects farther from BOTH points, the joint form; ours is
  the independent product, so it has no counterpart there.)
- ``DisSimLocal(k)``: the same gallery term ||r - c_r||^2; its query term takes the mean of the
  query's neighbours' *centroids* (not of the neighbours, Hara et al.'s c_q) and it shifts all
  values by their minimum; both are constant along a query's row, so the rankings, i.e. the
  scores up to a per-row constant, must agree.

scikit-hubness is not a dependency. This test runs when it is importable (``pip install
--target DIR --no-deps scikit-hubness`` with scikit-learn 1.5 on ``PYTHONPATH``) and is skipped
otherwise. Two incompatibilities with current libraries are worked around or named:
``import skhubness`` fails with ``ModuleNotFoundError: No module named
'sklearn.neighbors.ball_tree'`` (its package ``__init__`` imports a module scikit-learn removed in
0.24), so only ``skhubness.reduction`` is loaded, under a stub parent package; and with
scikit-learn >= 1.8 ``MutualProximity.fit`` fails with ``TypeError: check_array() got an
unexpected keyword argument 'force_all_finite'``, so scikit-learn < 1.8 is required (checked
with 1.5.2 and NumPy 2.4).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest

from nnn.methods import DisSimLocal, LocalScaling, MutualProximity

N, N_Q, D = 41, 13, 6
#: A training point's distance to itself is 0 in scikit-hubness's float64 lists, but ours comes
#: from a float32 self-similarity 1 +- dot_atol(D): d = sqrt(2 - 2 s) is then up to
#: sqrt(2 dot_atol(D)) ~ 1.3e-3 instead of 0. It enters NICDM's mean of k + 1 >= 2 distances
#: (~0.5 here: relative error < 1.3e-3 / 2 / 0.5 ~ 1.3e-3, halved by the square root of the
#: product) and MP's mean and std over all N points (< 1.3e-3 / N each, times |z| < 4);
#: the other quantities are float32 functions of O(1) distances (1e-5 relative).
SELF_RTOL = {"nicdm": 2e-3, "mp": 1e-3, "other": 1e-4}


@pytest.fixture
def skh(monkeypatch):
    """``skhubness.reduction``, loaded without the package's broken ``__init__``."""
    spec = importlib.util.find_spec("skhubness")
    if spec is None or importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-hubness / scikit-learn are not installed (see module docstring)")
    import sklearn

    if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8):
        pytest.skip(f"scikit-hubness 0.21 needs scikit-learn < 1.8 (found {sklearn.__version__})")
    stub = types.ModuleType("skhubness")
    stub.__path__ = list(spec.submodule_search_locations)
    for name in [m for m in sys.modules if m == "skhubness" or m.startswith("skhubness.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "skhubness", stub)
    return importlib.import_module("skhubness.reduction")


@pytest.fixture
def problem(unit):
    """Training points X (= gallery = query bank) and test points Q, with scikit-hubness's
    inputs: full sorted neighbour lists (distances, ids) of X in X and of Q in X."""
    x, q = unit(N, D), unit(N_Q, D)
    x64, q64 = x.astype(np.float64), q.astype(np.float64)

    def lists(a):
        dist = np.sqrt(np.maximum(((a[:, None, :] - x64[None]) ** 2).sum(-1), 0))
        ind = np.argsort(dist, axis=1, kind="stable")
        return np.take_along_axis(dist, ind, axis=1), ind

    return x, q, lists(x64), lists(q64)


def _by_gallery_id(values, ind):
    out = np.empty_like(values)
    np.put_along_axis(out, ind, values, axis=1)
    return out


@pytest.mark.parametrize("variant,method", [("standard", "standard"), ("nicdm", "nicdm")])
@pytest.mark.parametrize("k", [1, 5])
def test_local_scaling_matches_skhubness(skh, problem, variant, method, k):
    x, q, (dx, ix), (dq, iq) = problem
    theirs = skh.LocalScaling(k=k, method=method).fit(dx, ix).transform(dq, iq)[0]
    theirs = _by_gallery_id(theirs, iq)
    ours = LocalScaling(k=k + 1, variant=variant).fit(x, query_bank=x).score(q)
    want = np.log1p(-theirs) if variant == "standard" else -theirs
    rtol = SELF_RTOL["nicdm" if variant == "nicdm" else "other"]
    np.testing.assert_allclose(ours, want, rtol=rtol, atol=1e-5)


def test_mp_gaussian_matches_skhubness(skh, problem):
    x, q, (dx, ix), (dq, iq) = problem
    theirs = skh.MutualProximity(method="normal").fit(dx, ix).transform(dq, iq)[0]
    theirs = _by_gallery_id(theirs, iq)
    ours = MutualProximity(k=None).fit(x, query_bank=x).score(q)
    np.testing.assert_allclose(np.exp(ours), 1 - theirs, rtol=SELF_RTOL["mp"], atol=1e-6)


@pytest.mark.parametrize("k", [1, 4])
def test_dsl_ranks_like_skhubness(skh, problem, k):
    x, q, (dx, ix), (dq, iq) = problem
    model = skh.DisSimLocal(k=k).fit(dx, ix, X=x.astype(np.float64))
    theirs, ind = model.transform(dq.copy(), iq.copy(), X=q.astype(np.float64))
    theirs = _by_gallery_id(theirs, ind)
    ours = DisSimLocal(k=k).fit(x, query_bank=x)
    np.testing.assert_allclose(ours.gallery_term_ + (x.astype(np.float64) ** 2).sum(1),
                               model.X_train_dist_to_centroids_, rtol=0, atol=1e-5)
    shift = ours.score(q) + theirs          # -d' (ours) + d' + per-row constants (theirs)
    np.testing.assert_allclose(shift, shift[:, :1].repeat(N, axis=1), rtol=0, atol=1e-5)
