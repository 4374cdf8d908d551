"""The estimator contract every registered method keeps (nnn/methods/base.py, registry.py).

One case per method (and per DIS / DualDIS variant), parametrised: fit / score / search shapes,
the not-fitted error, inputs never modified, bad input named, keyword-only constructors, torch
inputs, ``with_params`` and the registry's names. The formulas of each method are tested in its
own file (test_nnn.py, test_qb_db_norm.py, test_dn.py, test_csls_identity.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import unit_rows
from nnn import methods
from nnn.methods import (CSLS, DN, METHODS, NNN, DBNorm, DisSimLocal, Identity, LocalScaling,
                         MutualProximity, QBNorm, method_class, paper_name)

N_G, N_QB, N_GB, N_Q, D = 37, 131, 59, 23, 16
#: MiB of bank chunks small enough that QB-Norm / DBNorm cross many chunk boundaries
SMALL_BUDGET = 0.02
#: (id, constructor keywords -> method, torch inputs score exactly as numpy ones)
CASES = [
    ("nnn", lambda **kw: NNN(k=4, alpha=0.75, **kw), False),
    ("qb_norm", lambda **kw: QBNorm(beta=20.0, memory_budget_mb=SMALL_BUDGET, **kw), True),
    ("dis", lambda **kw: QBNorm(beta=20.0, dynamic=True, memory_budget_mb=SMALL_BUDGET, **kw),
     True),
    ("dual_is", lambda **kw: DBNorm(beta_query=20.0, beta_gallery=5.0,
                                    memory_budget_mb=SMALL_BUDGET, **kw), True),
    ("dual_dis", lambda **kw: DBNorm(beta_query=20.0, beta_gallery=5.0, dynamic=True,
                                     memory_budget_mb=SMALL_BUDGET, **kw), True),
    ("dn", lambda **kw: DN(lam=0.5, **kw), False),
    ("csls", lambda **kw: CSLS(k=4, **kw), False),
    ("mp", lambda **kw: MutualProximity(k=4, memory_budget_mb=SMALL_BUDGET, **kw), False),
    ("mp_all", lambda **kw: MutualProximity(memory_budget_mb=SMALL_BUDGET, **kw), False),
    ("mp_empirical", lambda **kw: MutualProximity(k=4, variant="empirical",
                                                  memory_budget_mb=SMALL_BUDGET, **kw), False),
    ("ls", lambda **kw: LocalScaling(k=4, memory_budget_mb=SMALL_BUDGET, **kw), False),
    ("nicdm", lambda **kw: LocalScaling(k=4, variant="nicdm", memory_budget_mb=SMALL_BUDGET,
                                        **kw), False),
    ("dsl", lambda **kw: DisSimLocal(k=4, memory_budget_mb=SMALL_BUDGET, **kw), False),
    ("identity", lambda **kw: Identity(**kw), False),
]
MAKERS = [pytest.param(make, id=name) for name, make, _ in CASES]


@pytest.fixture(scope="module")
def data():
    """gallery (N_G, D), query bank (N_QB, D), gallery bank (N_GB, D), queries (N_Q, D)."""
    rng = np.random.default_rng(3)
    return tuple(unit_rows(rng.standard_normal((n, D))) for n in (N_G, N_QB, N_GB, N_Q))


def _fit(m, g, qb, gb):
    return m.fit(g, query_bank=qb, gallery_bank=gb)


def test_every_registered_method_has_a_case():
    assert {type(make()) for _, make, _ in CASES} == set(METHODS)
    assert set(methods.__all__) >= {cls.__name__ for cls in METHODS}
    for cls in METHODS:
        assert issubclass(cls, methods.RetrievalMethod), cls


@pytest.mark.parametrize("make", MAKERS)
def test_fit_score_search_shapes(data, make):
    g, qb, gb, q = data
    m = make(batch_size=5)  # 5 divides neither N_Q nor N_G
    assert _fit(m, g, qb, gb) is m
    s = m.score(q)
    assert s.shape == (N_Q, N_G) and s.dtype == np.float32 and np.isfinite(s).all()
    vals, ids = m.search(q, 6)
    assert vals.shape == ids.shape == (N_Q, 6)
    assert vals.dtype == np.float32 and ids.dtype == np.int64
    assert ((ids >= 0) & (ids < N_G)).all() and (np.diff(vals, axis=1) <= 0).all()
    np.testing.assert_allclose(vals, np.take_along_axis(s, ids, axis=1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(vals[:, 0], s.max(axis=1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", MAKERS)
def test_not_fitted_is_an_error(data, make):
    q = data[3]
    m = make()
    for call in (lambda: m.score(q), lambda: m.search(q, 2), lambda: m.with_params()):
        with pytest.raises(RuntimeError, match=f"{type(m).__name__} is not fitted; call fit"):
            call()


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("make", MAKERS)
def test_inputs_not_mutated(data, make, normalize):
    arrays = [2.0 * x for x in data]  # non-unit rows exercise normalize=True's copy
    before = [x.copy() for x in arrays]
    g, qb, gb, q = arrays
    m = make(normalize=normalize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # non-unit rows without normalize=True
        _fit(m, g, qb, gb)
        m.score(q)
        m.search(q, 3)
    for x, x0 in zip(arrays, before):
        np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("as_torch", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize("make", MAKERS)
def test_fitted_state_does_not_alias_the_callers_arrays(data, make, as_torch):
    """Neither the gallery nor a bank (DisSimLocal keeps its query bank) is kept by reference:
    a CPU float32 tensor shares memory with its NumPy view, so it is copied like an array."""
    g, qb, gb, q = (x.copy() for x in data)
    wrap = torch.from_numpy if as_torch else (lambda x: x)
    m = _fit(make(), wrap(g), wrap(qb), wrap(gb))
    before = m.score(q)
    for x in (g, qb, gb):
        x[:] = 0.0  # the caller reuses its buffers
    np.testing.assert_array_equal(m.score(q), before)


@pytest.mark.parametrize("make", MAKERS)
def test_missing_banks_are_named(data, make):
    g, qb, gb, _ = data
    m = make()
    for missing in m.requires:
        banks = {"query_bank": qb, "gallery_bank": gb, missing: None}
        with pytest.raises(ValueError, match=f"needs {missing}="):
            m.fit(g, **banks)


@pytest.mark.parametrize("make", MAKERS)
def test_bad_arrays_are_named(data, make):
    g, qb, gb, q = data
    for bank in make().requires:
        banks = {"query_bank": qb, "gallery_bank": gb}
        with pytest.raises(ValueError, match=f"{bank}.*dimension"):
            make().fit(g, **{**banks, bank: banks[bank][:, 1:]})
        bad = banks[bank].copy()
        bad[3, 2] = np.nan
        with pytest.raises(ValueError, match=f"{bank}.*NaN"):
            make().fit(g, **{**banks, bank: bad})
    m = _fit(make(), g, qb, gb)
    with pytest.raises(ValueError, match="queries.*dimension"):
        m.score(q[:, 1:])
    bad_q = q.copy()
    bad_q[0, 0] = np.inf
    with pytest.raises(ValueError, match="queries.*NaN or Inf"):
        m.search(bad_q)
    with pytest.raises(ValueError, match=f"top_k={N_G + 1} is larger than the gallery size "
                                         rf"\({N_G}\); use top_k <= {N_G}$"):
        m.search(q, top_k=N_G + 1)


@pytest.mark.parametrize("make", MAKERS)
def test_constructor_is_keyword_only_and_checks_the_device(make):
    cls = type(make())
    with pytest.raises(TypeError):
        cls(1.0)
    with pytest.raises(ValueError, match="device='tpu' is not a device"):
        make(device="tpu")


@pytest.mark.parametrize("make,exact", [pytest.param(m, e, id=n) for n, m, e in CASES])
def test_torch_inputs_match_numpy(data, make, exact):
    g, qb, gb, q = data
    t = [torch.from_numpy(x.copy()) for x in data]
    a, b = _fit(make(), g, qb, gb), _fit(make(), *t[:3])
    if exact:
        np.testing.assert_array_equal(a.score(q), b.score(t[3]))
        np.testing.assert_array_equal(a.search(q, 4)[1], b.search(t[3], 4)[1])
    else:  # MKL may pick another kernel path for differently aligned buffers: float32 rounding
        np.testing.assert_allclose(a.score(q), b.score(t[3]), rtol=0, atol=2e-5)
    np.testing.assert_array_equal(t[0].numpy(), g)


@pytest.mark.parametrize("make", MAKERS)
def test_with_params(data, make):
    g, qb, gb, q = data
    m = _fit(make(), g, qb, gb)
    if type(m)._set_params is methods.RetrievalMethod._set_params:  # DN, CSLS, Identity: refit
        with pytest.raises(TypeError, match=f"{type(m).__name__}.with_params is not supported"):
            m.with_params()
        return
    same = m.with_params(**{name: getattr(m, name) for name in m.tuned_params})
    assert same is not m
    np.testing.assert_array_equal(same.score(q), m.score(q))
    np.testing.assert_array_equal(m.with_params().score(q), m.score(q))  # None keeps values
    with pytest.raises(TypeError, match=r"with_params\(\) got \['gamma'\]"):
        m.with_params(gamma=1.0)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_registry_finds_each_class_by_every_name(cls):
    for name in (cls.__name__, f"nnn.methods.{cls.__name__}", cls.option, cls.paper_name,
                 cls.option.upper(), cls.dynamic_paper_name or cls.paper_name):
        assert method_class(name) is cls, name
    assert set(cls.tuning_grid) == ({"alphas", "ks"} if cls is NNN else set(cls.tuning_grid))
    assert bool(cls.tuned_params) == bool(cls.tuning_grid)
    assert set(cls.fit_grid_params) <= set(cls.tuned_params)


def test_registry_names():
    assert [paper_name(c) for c in METHODS] == ["NNN", "QB-Norm", "DualIS", "DN", "CSLS", "MP",
                                                "LS", "DSL", "Orig"]
    assert paper_name(DBNorm, dynamic=True) == "DualDIS"
    assert paper_name(QBNorm, dynamic=True) == "DIS" and paper_name(NNN, dynamic=True) == "NNN"
    assert method_class("qbnorm") is QBNorm and method_class("dual_dis") is DBNorm
    assert not Identity.tuned_params
    with pytest.raises(ValueError, match="unknown method 'nnm'; use one of"):
        method_class("nnm")
