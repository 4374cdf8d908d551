"""Leakage-free tuning (nnn.tuning): grids, one-pass NNN search, float64 references, no test access."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnn.data.base import EmbeddingSet
from nnn.data.splits import reference_and_tuning_sets, train_test_split
from nnn.methods import CSLS, DBNorm, DN, Identity, NNN, QBNorm
from nnn.methods._topk import ReferenceTopK
from nnn.methods.base import RetrievalMethod
from nnn import tuning as T
from nnn.methods import METHODS
from nnn.methods import grids as G
from nnn.task import RetrievalTask
from nnn.tuning import tune, tune_csls, tune_db_norm, tune_dn, tune_nnn, tune_qb_norm

from conftest import unit_rows

D = 12


def make_set(rng, n_img: int, caps_per_img: int = 2, name: str = "s", noise: float = 0.9) -> EmbeddingSet:
    """Images (n_img, D) and caps_per_img noisy captions each, unit rows; odd sizes on purpose."""
    image = unit_rows(rng.standard_normal((n_img, D)))
    c2i = np.repeat(np.arange(n_img), caps_per_img)
    text = unit_rows(image[c2i] + noise * rng.standard_normal((len(c2i), D)) / np.sqrt(D))
    return EmbeddingSet(name, image, text, c2i)


@pytest.fixture
def sets():
    """(tuning, refs): 37 tuning images / 74 captions, 53 reference images / 106 captions."""
    rng = np.random.default_rng(7)
    return make_set(rng, 37, name="tuning"), make_set(rng, 53, name="refs")


# -- float64 references written from the formulas ---------------------------------------------
def r1_from_scores(scores: np.ndarray, c2i: np.ndarray, direction: str) -> float:
    """R@1 (percent) from a dense float64 score matrix: a hit when a relevant item strictly
    beats every non-relevant one (ties count against the query)."""
    if direction == "t2i":
        relevant = np.zeros(scores.shape, dtype=bool)
        relevant[np.arange(len(c2i)), c2i] = True
    else:
        relevant = c2i[None, :] == np.arange(scores.shape[0])[:, None]
    best_rel = np.where(relevant, scores, -np.inf).max(axis=1)
    best_other = np.where(relevant, -np.inf, scores).max(axis=1)
    return float((best_rel > best_other).mean() * 100)


def sides(split: EmbeddingSet, refs: EmbeddingSet, direction: str):
    """float64 (gallery, queries, query_bank, gallery_bank) for a direction."""
    f = lambda x: x.astype(np.float64)  # noqa: E731
    if direction == "t2i":
        return f(split.image), f(split.text), f(refs.text), f(refs.image)
    return f(split.text), f(split.image), f(refs.image), f(refs.text)


def nnn_r1(split, refs, direction, k, alpha):
    g, q, qb, _ = sides(split, refs, direction)
    bias = alpha * np.sort(qb @ g.T, axis=0)[-k:].mean(axis=0)
    return r1_from_scores(q @ g.T - bias, split.caption_to_image, direction)


def log_norm(bank, g, beta):
    s = beta * (bank @ g.T)
    m = s.max(axis=0)
    return m + np.log(np.exp(s - m).sum(axis=0))


def db_r1(split, refs, direction, bq, bg):
    g, q, qb, gb = sides(split, refs, direction)
    s = q @ g.T
    if bq == bg == 0:            # every factor off: the raw similarity (Identity)
        return r1_from_scores(s, split.caption_to_image, direction)
    scores = (bq + bg) * s
    if bq > 0:
        scores = scores - log_norm(qb, g, bq)
    if bg > 0:
        scores = scores - log_norm(gb, g, bg)
    return r1_from_scores(scores, split.caption_to_image, direction)


def dn_r1(split, refs, direction, lam):
    g, q, qb, gb = sides(split, refs, direction)
    scores = (q - lam * qb.mean(axis=0)) @ (g - lam * gb.mean(axis=0)).T
    return r1_from_scores(scores, split.caption_to_image, direction)


# -- the paper's grids --------------------------------------------------------------------------
def test_grids_are_the_papers():
    assert G.ALPHA_GRID == (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.375, 1.5)
    assert G.K_GRID == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    coarse = np.array(G.BETA_COARSE_GRID)
    assert len(coarse) == 20 and coarse[0] == pytest.approx(0.001) and coarse[-1] == pytest.approx(400)
    assert np.allclose(np.diff(np.log(coarse)), np.log(400 / 0.001) / 19)   # log-spaced
    low, high = G.BETA_LOW_DENSE_GRID, G.BETA_HIGH_DENSE_GRID
    for grid, lo, hi in ((low, 0.001, 15), (high, 25, 200)):   # "a resolution of 20 values"
        g = np.array(grid)
        assert g[0] == pytest.approx(lo) and g[-1] == pytest.approx(hi) and len(g) == 20
        assert np.allclose(np.diff(np.log(g)), np.log(hi / lo) / 19)
    assert set(G.QB_NORM_BETA_GRID) == {0.0, *G.BETA_COARSE_GRID, *low, *high}
    assert list(G.QB_NORM_BETA_GRID) == sorted(G.QB_NORM_BETA_GRID)
    # coarse, then both assignments of the dense ranges to the banks (the paper is ambiguous)
    assert list(G.DB_NORM_STAGES.values()) == [
        ((0.0, *G.BETA_COARSE_GRID), (0.0, *G.BETA_COARSE_GRID)),
        ((0.0, *low), (0.0, *high)), ((0.0, *high), (0.0, *low))]
    assert G.DN_LAMBDA_GRID[0] == 0 and G.DN_LAMBDA_GRID[-1] == 1 and 0.5 in G.DN_LAMBDA_GRID
    # each class declares its grid under the tuner's keywords (the keys of tune.grid)
    assert NNN.tuning_grid == {"alphas": G.ALPHA_GRID, "ks": G.K_GRID}
    assert CSLS.tuning_grid == {"ks": G.K_GRID} and DN.tuning_grid == {"lams": G.DN_LAMBDA_GRID}
    assert QBNorm.tuning_grid == {"betas": G.QB_NORM_BETA_GRID}
    assert DBNorm.tuning_grid == {"stages": G.DB_NORM_STAGES}


# -- NNN: one pass, equal to fresh fits and to the float64 formula -----------------------------
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_nnn_one_pass_grid_equals_fresh_fits_and_formula(sets, direction, monkeypatch):
    tuning, refs = sets
    alphas, ks = (0.25, 0.75, 1.5), (1, 3, 8, 17)
    passes = []
    run = ReferenceTopK.run

    def counted(self, x, refs_, k, device):
        passes.append(k)
        return run(self, x, refs_, k, device)

    monkeypatch.setattr(ReferenceTopK, "run", counted)
    res = tune_nnn(tuning, refs, direction, alphas=alphas, ks=ks, batch_size=10)
    assert passes == [17]         # one pass over the references, for the largest k of the grid
    monkeypatch.setattr(ReferenceTopK, "run", run)
    assert res.table.shape == (3, 4) and res.axes == {"alpha": list(alphas), "k": list(ks)}
    task = RetrievalTask.from_sets(tuning, refs, direction)
    for p in res.grid:
        fresh = task.fit(NNN(k=p["k"], alpha=p["alpha"], progress=False))
        assert p["R@1"] == task.recall_at_1(fresh)
        assert p["R@1"] == pytest.approx(nnn_r1(tuning, refs, direction, p["k"], p["alpha"]))
        assert res.table[alphas.index(p["alpha"]), ks.index(p["k"])] == p["R@1"]
    # the grid is not flat, so choosing among it means something
    assert len({p["R@1"] for p in res.grid}) > 1


def test_best_maximises_grid_and_is_deterministic(sets):
    tuning, refs = sets
    a = tune_nnn(tuning, refs, "t2i", alphas=(0.25, 0.5, 1.0), ks=(2, 4, 16))
    b = tune_nnn(tuning, refs, "t2i", alphas=(0.25, 0.5, 1.0), ks=(2, 4, 16))
    assert a.to_dict() == b.to_dict()
    top = max(p["R@1"] for p in a.grid)
    assert a.best_score == top == np.nanmax(a.table)
    first = next(p for p in a.grid if p["R@1"] == top)          # ties: first in grid order
    assert a.best == {"alpha": first["alpha"], "k": first["k"]}
    json.dumps(a.to_dict(), allow_nan=False)


def test_default_k_grid_is_cut_at_reference_size(sets, caplog):
    tuning, refs = sets                       # 106 reference captions (t2i), 53 images (i2t)
    with caplog.at_level("INFO", logger="nnn.tuning"):
        res = tune_nnn(tuning, refs, "i2t", alphas=(0.75,))
    assert res.axes["k"] == [1, 2, 4, 8, 16, 32]
    assert res.notes and "53" in res.notes[0] and "cut" in caplog.text


def test_nnn_bad_grids(sets):
    tuning, refs = sets
    with pytest.raises(ValueError, match="alphas is empty"):
        tune_nnn(tuning, refs, alphas=[])
    with pytest.raises(ValueError, match="ks is empty"):
        tune_nnn(tuning, refs, ks=[])
    with pytest.raises(ValueError, match=r"ks \[128\] exceed the number of references \(106\)"):
        tune_nnn(tuning, refs, "t2i", ks=[4, 128])
    with pytest.raises(ValueError, match="positive integer"):
        tune_nnn(tuning, refs, ks=[0, 4])
    with pytest.raises(ValueError, match=">= 0"):
        tune_nnn(tuning, refs, alphas=[-0.5])
    with pytest.raises(ValueError, match="repeated"):
        tune_nnn(tuning, refs, alphas=[0.5, 0.5])
    with pytest.raises(ValueError, match="set by the tuner"):
        tune_nnn(tuning, refs, k=4)
    with pytest.raises(ValueError, match="set by the tuner"):
        tune_nnn(tuning, refs, ks=(2,), k_max=64)
    assert tune_nnn(tuning, refs, alphas=(0.5,), ks=(2,), k_max=None).method_kwargs == {}
    with pytest.raises(ValueError, match="direction"):
        tune_nnn(tuning, refs, "text2image")


# -- QB-Norm, DBNorm, DN -------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_qb_norm_grid_matches_formula(sets, direction):
    tuning, refs = sets
    res = tune_qb_norm(tuning, refs, direction, betas=(0.0, 0.5, 7.0, 60.0), batch_size=9)
    for p in res.grid:
        assert p["R@1"] == pytest.approx(db_r1(tuning, refs, direction, p["beta"], 0.0))
    assert res.best_score == max(p["R@1"] for p in res.grid)
    assert isinstance(T.make_estimator("qb_norm", {"beta": 0.0}), Identity)
    est = T.make_estimator("qb_norm", {"beta": 3.0}, dynamic=True)
    assert isinstance(est, QBNorm) and est.beta == 3.0 and est.dynamic


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_db_norm_stages_match_formula(sets, direction):
    tuning, refs = sets
    stages = [((0.0, 2.0), (0.0, 2.0)), ((2.0, 9.0), (30.0,))]   # coarse product, then a second stage
    res = tune_db_norm(tuning, refs, direction, stages=stages)
    pts = [(p["beta_query"], p["beta_gallery"]) for p in res.grid]
    assert pts == [(0.0, 0.0), (0.0, 2.0), (2.0, 0.0), (2.0, 2.0), (2.0, 30.0), (9.0, 30.0)]
    for p in res.grid:
        assert p["R@1"] == pytest.approx(db_r1(tuning, refs, direction, p["beta_query"], p["beta_gallery"]))
    assert res.axes == {"beta_query": [0.0, 2.0, 9.0], "beta_gallery": [0.0, 2.0, 30.0]}
    assert np.isnan(res.table[2, 0]) and res.table[2, 2] == res.grid[-1]["R@1"]
    # each stage's best point, and which stage the chosen point came from
    r1 = {(p["beta_query"], p["beta_gallery"]): p["R@1"] for p in res.grid}
    assert list(res.stages) == ["stage 0", "stage 1"]
    for name, pts in (("stage 0", pts[:4]), ("stage 1", [(2.0, 30.0), (9.0, 30.0)])):
        want = max(pts, key=r1.__getitem__)
        assert res.stages[name]["best"] == {"beta_query": want[0], "beta_gallery": want[1]}
        assert res.stages[name]["R@1"] == r1[want]
    assert [v["chosen"] for v in res.stages.values()].count(True) == 1
    chosen = next(n for n, v in res.stages.items() if v["chosen"])
    assert res.stages[chosen]["best"] == res.best and chosen in res.notes[-1]
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))["stages"] == res.stages
    named = tune_db_norm(tuning, refs, direction, stages={"a": stages[0], "b": stages[1]})
    assert list(named.stages) == ["a", "b"] and named.grid == res.grid
    assert isinstance(T.make_estimator("db_norm", {"beta_query": 0, "beta_gallery": 0}), Identity)
    est = T.make_estimator("db_norm", {"beta_query": 0.0, "beta_gallery": 5.0})
    assert isinstance(est, DBNorm) and (est.beta_query, est.beta_gallery) == (0.0, 5.0)


@pytest.fixture
def bank_passes(monkeypatch):
    """Records (bank rows, sorted distinct betas) for every streamed bank pass (one call of
    ``bank_stats`` streams its bank once) of QBNorm / DBNorm fits."""
    import nnn.methods.db_norm as db_mod
    import nnn.methods.qb_norm as qb_mod
    passes = []
    for mod in (qb_mod, db_mod):
        def counted(bank, gallery, *, betas, _run=mod.bank_stats, **kw):
            passes.append((len(bank), tuple(sorted(set(betas)))))
            return _run(bank, gallery, betas=betas, **kw)
        monkeypatch.setattr(mod, "bank_stats", counted)
    return passes


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_qb_norm_one_pass_grid_equals_fresh_fits(sets, direction, dynamic, bank_passes):
    tuning, refs = sets
    betas = (0.0, 0.5, 7.0, 60.0, 150.0)
    res = tune_qb_norm(tuning, refs, direction, betas=betas, dynamic=dynamic, progress=False)
    task = RetrievalTask.from_sets(tuning, refs, direction)
    assert bank_passes == [(len(task.query_bank), (0.5, 7.0, 60.0, 150.0))]   # one pass
    fresh = [task.recall_at_1(task.fit(T.make_estimator("qb_norm", {"beta": b}, dynamic=dynamic,
                                                        progress=False))) for b in betas]
    assert len(bank_passes) == 1 + 4                                   # + one per fresh fit
    np.testing.assert_allclose([p["R@1"] for p in res.grid], fresh, rtol=0, atol=1e-5)
    assert res.best == {"beta": betas[int(np.argmax(fresh))]}
    assert len(set(fresh)) > 1


@pytest.mark.parametrize("dynamic, gate", [(False, "raw"), (True, "raw"), (True, "exp")])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_db_norm_one_pass_grid_equals_fresh_fits(sets, direction, dynamic, gate, bank_passes):
    tuning, refs = sets
    stages = [((0.0, 0.5, 20.0), (0.0, 0.5, 20.0)), ((0.0, 2.0, 100.0), (0.0, 30.0))]
    res = tune_db_norm(tuning, refs, direction, stages=stages, dynamic=dynamic, gate=gate,
                       progress=False, batch_size=29)   # blocks of 29 queries: 29, 29, 16 / 29, 8
    task = RetrievalTask.from_sets(tuning, refs, direction)
    # one pass per bank, each for all the betas > 0 of its axis
    assert bank_passes == [(len(task.query_bank), (0.5, 2.0, 20.0, 100.0)),
                           (len(task.gallery_bank), (0.5, 20.0, 30.0))]
    assert len(res.grid) == 3 * 3 + 3 * 2 - 1                          # (0, 0) shared
    fresh = [task.recall_at_1(task.fit(T.make_estimator(
        "db_norm", {k: p[k] for k in ("beta_query", "beta_gallery")}, dynamic=dynamic,
        gate=gate, progress=False)), batch_size=29) for p in res.grid]   # the same products
    np.testing.assert_allclose([p["R@1"] for p in res.grid], fresh, rtol=0, atol=1e-5)
    best = res.grid[int(np.argmax(fresh))]
    assert res.best == {"beta_query": best["beta_query"], "beta_gallery": best["beta_gallery"]}
    assert len(set(fresh)) > 1


def test_only_zero_betas_need_no_bank_pass(sets, bank_passes):
    tuning, refs = sets
    assert tune_qb_norm(tuning, refs, betas=(0.0,)).grid[0]["R@1"] == pytest.approx(
        db_r1(tuning, refs, "t2i", 0.0, 0.0))
    tune_db_norm(tuning, refs, stages=[((0.0,), (0.0,))])
    tune_db_norm(tuning, refs, stages=[((0.0,), (0.0, 4.0))])         # the gallery bank only
    assert bank_passes == [(len(refs.image), (4.0,))]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_count_hits_is_rank_one_with_ties(direction):
    """The tuner's hit count equals ``first_relevant_rank == 1`` on scores with many ties
    (integers in 0..3), relevant items included."""
    import torch

    from nnn.metrics import first_relevant_rank, relevant_block

    rng = np.random.default_rng(3)
    n_q, caps = 41, 3
    c2i = rng.permutation(np.repeat(np.arange(n_q), caps)) if direction == "i2t" else (
        rng.integers(0, 13, n_q))
    n_g = len(c2i) if direction == "i2t" else 13
    for _ in range(20):
        scores = rng.integers(0, 4, (n_q, n_g)).astype(np.float32)
        relevant = relevant_block(direction, c2i, 0, n_q, n_g)
        rows, cols = (torch.from_numpy(x) for x in np.nonzero(relevant))
        want = int((first_relevant_rank(scores, relevant) == 1).sum())
        assert T._count_hits(torch.from_numpy(scores.copy()), rows, cols) == want


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_dn_grid_matches_formula(sets, direction):
    tuning, refs = sets
    res = tune_dn(tuning, refs, direction, lams=(0.0, 0.5, 1.0))
    for p in res.grid:
        assert p["R@1"] == pytest.approx(dn_r1(tuning, refs, direction, p["lam"]))
    assert isinstance(res.estimator(), DN) and res.estimator().lam == res.best["lam"]


def csls_r1(split, refs, direction, k):
    g, q, qb, _ = sides(split, refs, direction)
    s = q @ g.T
    gallery_side = np.sort(qb @ g.T, axis=0)[-k:].mean(axis=0)       # r_B(r), (n_g,)
    query_side = np.sort(s, axis=1)[:, -k:].mean(axis=1, keepdims=True)  # r_B(q), (n_q, 1)
    return r1_from_scores(2 * s - gallery_side - query_side, split.caption_to_image, direction)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_csls_k_grid_matches_formula_and_is_cut_at_the_smaller_side(sets, direction):
    tuning, refs = sets
    res = tune_csls(tuning, refs, direction)
    task = RetrievalTask.from_sets(tuning, refs, direction)
    limit = min(len(task.query_bank), len(task.gallery))  # t2i: 37 tuning images; i2t: 53 refs
    assert res.axes["k"] == [k for k in G.K_GRID if k <= limit] and res.notes
    # float32 scores against the float64 formula: a near-tie may flip one query, no more
    one_query = 100.0 / len(task.queries)
    for p in res.grid:
        assert p["R@1"] == pytest.approx(csls_r1(tuning, refs, direction, p["k"]),
                                         abs=one_query + 1e-9)
    assert isinstance(res.estimator(), CSLS) and res.estimator().k == res.best["k"]


def test_dispatcher_and_bad_inputs(sets):
    tuning, refs = sets
    res = tune("QB-Norm", tuning, refs, "t2i", betas=(1.0, 10.0), dynamic=True)
    assert res.method == "qb_norm" and res.method_kwargs == {"dynamic": True}
    assert set(T.TUNERS) == {cls.option for cls in METHODS if cls.tuned_params}
    with pytest.raises(ValueError, match="set by the tuner"):
        tune("db_norm", tuning, refs, beta_gallery=3.0)
    assert res.estimator().dynamic is True
    assert tune("nnn", tuning, refs, alphas=(0.5,), ks=(4,)).best == {"alpha": 0.5, "k": 4}
    with pytest.raises(ValueError, match="method 'identity' has no hyper-parameters to tune"):
        tune("identity", tuning, refs)
    with pytest.raises(ValueError, match="unknown method 'nnm'"):
        tune("nnm", tuning, refs)
    with pytest.raises(ValueError, match="stages is empty"):
        tune_db_norm(tuning, refs, stages=[])
    with pytest.raises(ValueError, match="betas is empty"):
        tune_qb_norm(tuning, refs, betas=[])
    with pytest.raises(ValueError, match="set by the tuner"):
        tune_qb_norm(tuning, refs, beta_grid=(1.0,))
    with pytest.raises(ValueError, match="set by the tuner"):
        tune_db_norm(tuning, refs, beta_gallery_grid=(1.0,))
    with pytest.raises(ValueError, match="finite"):
        tune_dn(tuning, refs, lams=[float("nan")])
    other = EmbeddingSet("other", refs.image[:, :6].copy(), refs.text[:, :6].copy(), refs.caption_to_image)
    with pytest.raises(ValueError, match="dimension"):
        tune_dn(tuning, other)


# -- no test leakage -----------------------------------------------------------------------------
TUNE_KWARGS = {"nnn": {"alphas": (0.5, 1.0), "ks": (2, 8)}, "qb_norm": {"betas": (0.0, 5.0)},
               "db_norm": {"stages": [((0.0, 5.0), (0.0, 20.0))]}, "dn": {"lams": (0.0, 0.5)}}


def protocol(seed: int = 3):
    """Train/test split of one embedding set, then the reference/tuning split of train."""
    full = make_set(np.random.default_rng(seed), 151, name="full")
    train_rows, test_rows = train_test_split(151, train_fraction=0.7, seed=seed)
    train, test = full.subset_images(train_rows, "train"), full.subset_images(test_rows, "test")
    refs, tuning = reference_and_tuning_sets(train, fraction=0.5, tuning_size=len(test.image), seed=seed)
    return refs, tuning, test


@pytest.fixture
def recorder(monkeypatch):
    """Records every array given to any method's fit (gallery and banks) or score (queries)."""
    seen = []
    fit, score = RetrievalMethod.fit, RetrievalMethod.score

    def rec_fit(self, gallery, query_bank=None, gallery_bank=None):
        seen.extend(x for x in (gallery, query_bank, gallery_bank) if x is not None)
        return fit(self, gallery, query_bank=query_bank, gallery_bank=gallery_bank)

    def rec_score(self, queries):
        seen.append(queries)
        return score(self, queries)

    monkeypatch.setattr(RetrievalMethod, "fit", rec_fit)
    monkeypatch.setattr(RetrievalMethod, "score", rec_score)
    return seen


def touches(seen, arrays) -> bool:
    return any(np.shares_memory(x, a) for x in seen for a in arrays)


@pytest.mark.parametrize("method", sorted(TUNE_KWARGS))
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_tuning_never_reads_the_test_split(method, direction, recorder):
    refs, tuning, test = protocol()
    # the tuning and reference parts hold different images (no row of one appears in the other)
    assert not (np.abs(tuning.image[:, None] - refs.image[None]).sum(-1) < 1e-6).any()

    res = tune(method, tuning, refs, direction, **TUNE_KWARGS[method])
    assert recorder, "the recorder saw no method call"
    # positive control: every recorded input is a tuning or reference array (views included)
    allowed = [tuning.image, tuning.text, refs.image, refs.text]
    assert all(any(np.shares_memory(x, a) for a in allowed) for x in recorder)
    assert not touches(recorder, [test.image, test.text])

    # the same tuning with the test split poisoned (NaN everywhere) gives the same choice ...
    test.image[:] = np.nan
    test.text[:] = np.nan
    again = tune(method, tuning, refs, direction, **TUNE_KWARGS[method])
    assert again.to_dict() == res.to_dict()
    # ... while a method that did read the poisoned split would fail loudly
    task = RetrievalTask.from_sets(test, refs, direction)
    with pytest.raises(ValueError, match="NaN"):
        task.fit(res.estimator())


def test_recorder_detects_a_leak(recorder):
    """Negative control: tuning on the test split by mistake is caught by the same check."""
    refs, _, test = protocol()
    tune("dn", test, refs, "t2i", lams=(0.5,))
    assert touches(recorder, [test.image, test.text])


def test_tuned_params_apply_to_test():
    """The protocol end to end: tune on tuning, fit the best estimator on test with the same refs."""
    refs, tuning, test = protocol()
    res = tune("nnn", tuning, refs, "t2i", alphas=(0.5, 1.0), ks=(2, 8))
    task = RetrievalTask.from_sets(test, refs, "t2i")
    fitted = task.fit(res.estimator(progress=False))
    assert (fitted.k, fitted.alpha) == (res.best["k"], res.best["alpha"])
    assert task.recall_at_1(fitted) == pytest.approx(
        nnn_r1(test, refs, "t2i", res.best["k"], res.best["alpha"]))


@pytest.mark.parametrize("method, grids", [("nnn", ("alphas", "ks")), ("qb_norm", ("betas",)),
                                           ("dual_dis", ("stages",)), ("dn", ("lams",)),
                                           ("csls", ("ks",)), ("mp", ("ks",)), ("none", ())])
def test_grid_keywords_are_the_tuners_grids(method, grids):
    assert T.grid_keywords(method) == grids
