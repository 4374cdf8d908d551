"""Tolerances that float32 rounding allows on any CPU and thread count, and a tie-aware top-k check.

BLAS and torch pick their summation order by CPU (AVX2, AVX-512, AMX kernels), thread count and
matrix shape (batch size, chunking), so two float32 evaluations of the same dot product may
differ. In any order, a float32 dot product of length d is within ``d * u * sum_i |x_i y_i|``
of the exact value (u = 2**-24; Higham, *Accuracy and Stability of Numerical Algorithms*, 3.1),
and ``sum_i |x_i y_i| <= |x| |y|``; two float32 evaluations therefore differ by at most
``d * EPS32 * |x| |y|`` (EPS32 = 2u = 2**-23), and so does one evaluation from a float64 reference.
Typical errors are about sqrt(d) times smaller; tests use the worst case, which still sits far
below the effects they check.
"""

from __future__ import annotations

import numpy as np

#: float32 machine epsilon, 2**-23 (twice the unit roundoff)
EPS32 = float(np.finfo(np.float32).eps)


def dot_atol(d: int, scale: float = 1.0) -> float:
    """Worst-case difference between float32 dot products of length ``d`` (|x| |y| <= ``scale``)
    computed in two summation orders, or between one and the exact value: ``(d + 1) * EPS32 *
    scale`` (the +1 covers rounding the result to float32)."""
    return (d + 1) * EPS32 * scale


def assert_topk_ids(ids, ref_scores, atol: float) -> None:
    """``ids`` (n_q, k) are a top-k of ``ref_scores`` (n_q, n_g) in descending order, up to
    near-ties: the ids of a row are distinct and their reference scores equal the row's k
    largest reference scores, in order, to within ``atol``.

    Equivalent to comparing with ``argsort(-ref_scores)[:, :k]`` wherever neighbouring scores
    differ by more than ``atol``; where they do not, rounding on another CPU may swap the two
    items, and either order passes. Use ``atol`` >= the float32 error of the scores that chose
    ``ids`` (twice it when both sides are float32).
    """
    ids, ref = np.asarray(ids), np.asarray(ref_scores, dtype=np.float64)
    k = ids.shape[1]
    assert (np.sort(ids, axis=1)[:, 1:] != np.sort(ids, axis=1)[:, :-1]).all(), "repeated ids"
    got = np.take_along_axis(ref, ids, axis=1)
    want = -np.sort(-ref, axis=1)[:, :k]
    np.testing.assert_allclose(got, want, rtol=0, atol=atol,
                               err_msg="ids are not the top-k of the reference scores")
