"""Row-wise selection (``nnn.methods._selection``): the same values as a plain sort, on both the
NumPy and the torch path, for every dtype it takes, strided views, ties and -inf."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnn.methods import _selection as sel

# (rows, columns, k): NumPy selects rows of at most _NUMPY_MAX_WIDTH * k values, torch the rest
SHAPES = [(1, 1, 1), (7, 13, 13), (33, 257, 5), (17, 1031, 16), (5, 3001, 2), (3, 40_003, 7)]


def _rows(shape, dtype, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    if ties:                                                   # many equal values per row
        a = np.round(a * 2) / 2
        a[:, ::5] = -np.inf
    return torch.from_numpy(a).to(dtype)


def _reference(x: torch.Tensor, k: int) -> np.ndarray:
    """The k largest values of each row, descending, in float64 (a plain full sort)."""
    return -np.sort(-x.double().numpy(), axis=1)[:, :k]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape_k", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_selection_equals_a_full_sort(dtype, shape_k, ties):
    b, c, k = shape_k
    x = _rows((b, c), dtype, ties=ties)
    want = _reference(x, k)
    values = sel.topk_values(x, k)
    assert values.dtype == dtype and values.shape == (b, k)
    np.testing.assert_array_equal(-np.sort(-values.double().numpy(), axis=1), want)
    kth = sel.kth_largest(x, k)
    assert kth.dtype == dtype and kth.shape == (b,)
    np.testing.assert_array_equal(kth.double().numpy(), want[:, -1])
    idx = sel.topk_indices(x, k)
    assert idx.dtype == torch.int64 and idx.shape == (b, k)
    assert all(len(set(row.tolist())) == k for row in idx)           # k distinct columns
    picked = torch.gather(x, 1, idx).double().numpy()
    np.testing.assert_array_equal(-np.sort(-picked, axis=1), want)
    ordered = sel.sorted_descending(x)
    assert ordered.dtype == dtype and ordered.shape == (b, c)
    np.testing.assert_array_equal(ordered.double().numpy(), _reference(x, c))


def test_strided_views_and_the_path_each_width_takes(monkeypatch):
    base = _rows((41, 900), torch.float32, seed=3)
    view = base[3:37:2, 5:805]                                # non-contiguous rows
    calls = []
    real = np.partition
    monkeypatch.setattr(np, "partition", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    for k in (13, 12):       # 800 <= 64 * 13: NumPy; 800 > 64 * 12: torch
        got = sel.topk_values(view, k)
        np.testing.assert_array_equal(-np.sort(-got.numpy(), axis=1), _reference(view, k))
    assert len(calls) == 1
    np.testing.assert_array_equal(base[3:37:2, 5:805].numpy(), view.numpy())   # untouched


def test_results_own_their_memory():
    x = _rows((4, 50), torch.float32)
    for out in (sel.topk_values(x, 7), sel.kth_largest(x, 7), sel.topk_indices(x, 7),
                sel.sorted_descending(x)):
        assert out.is_contiguous()
        out.zero_()                                           # would fail on a negative stride
    assert not torch.equal(x, torch.zeros_like(x))
