"""The paper's protocol, re-derived: float64 formulas of every method at odd sizes, the paper's
grids and experiment settings, the one-pass alpha x k analysis against fresh fits, the
gender-bias metrics against plain loops, and clear errors for the analysis' and tuners' limits."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import unit_rows
from tolerances import dot_atol

from nnn import gender_bias as GB
from nnn.ablations import alpha_k_analysis, nnn_recall_grid, read_hub_counts, write_hub_counts
from nnn.data.base import EmbeddingSet
from nnn.methods import CSLS, DN, NNN, DBNorm, QBNorm
from nnn.methods import grids as G
from nnn.task import RetrievalTask
from nnn.tuning import tune, tune_csls, tune_neighbourhood_k

CONF = Path(__file__).resolve().parents[1] / "conf"
D = 7


@pytest.fixture
def arrays():
    """float32 unit rows: gallery 37, query bank 53, gallery bank 41, queries 29 (odd sizes,
    scored 7 queries and streamed in small bank chunks at a time)."""
    rng = np.random.default_rng(5)
    return tuple(unit_rows(rng.standard_normal((n, D))).astype(np.float32) for n in (37, 53, 41, 29))


def _lse(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _activation(bank: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Gallery items that are the top-1 (ties included) of some bank row."""
    s = bank @ g.T
    return (s >= s.max(axis=1, keepdims=True)).any(axis=0)


def _assert_ranks_like(scores: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    """Along each row's order by ``scores`` (descending), ``ref`` never increases by more than
    ``rtol`` of its magnitude (near-ties may swap on another CPU)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    r = np.take_along_axis(ref, order, axis=1)
    rise = r[:, 1:] - r[:, :-1]
    bound = rtol * np.maximum(np.abs(r[:, 1:]), np.abs(r[:, :-1])) + 1e-12
    assert (rise <= bound).all(), float((rise - bound).max())


# -- the methods against their paper formulas (float64) ---------------------------------------
@pytest.mark.parametrize("k, alpha", [(1, 0.25), (5, 0.75), (53, 1.5)])
def test_nnn_is_the_papers_bias(arrays, k, alpha):
    g, qb, _, q = arrays
    G64, Q64, QB64 = (x.astype(np.float64) for x in (g, q, qb))
    bias = alpha * np.sort(QB64 @ G64.T, axis=0)[::-1][:k].mean(axis=0)        # Eq. 1
    m = NNN(k=k, alpha=alpha, batch_size=7, precision="float32", progress=False).fit(g, query_bank=qb)
    np.testing.assert_allclose(m.bias_, bias, rtol=0, atol=alpha * dot_atol(D) * 2)
    np.testing.assert_allclose(m.score(q), Q64 @ G64.T - bias, rtol=0,            # Eq. 2
                               atol=(1 + alpha) * dot_atol(D) * 2)


@pytest.mark.parametrize("beta", [0.001, 1.0, 20.0])
@pytest.mark.parametrize("dynamic", [False, True])
def test_qb_norm_and_dis_are_the_papers(arrays, beta, dynamic):
    g, qb, _, q = arrays
    G64, Q64, QB64 = (x.astype(np.float64) for x in (g, q, qb))
    s = Q64 @ G64.T
    log_n = beta * s - _lse(beta * (QB64 @ G64.T), axis=0)      # log of the inverted softmax
    gate = _activation(QB64, G64)[s.argmax(axis=1)]
    assert 0 < gate.sum() < len(q)                              # both kinds of rows occur
    m = QBNorm(beta=beta, dynamic=dynamic, batch_size=7, memory_budget_mb=0.001,
               progress=False).fit(g, query_bank=qb)
    scores = m.score(q).astype(np.float64)
    atol = 4 * dot_atol(D) * (1 + beta)
    normed = np.ones(len(q), bool) if not dynamic else gate
    shift = scores[normed] - log_n[normed]                      # log n + a constant (log n_b)
    np.testing.assert_allclose(shift, np.log(len(qb)), rtol=0, atol=atol)
    if dynamic:                                                 # DIS keeps s(q, r) elsewhere
        np.testing.assert_allclose(scores[~gate], s[~gate], rtol=0, atol=2 * dot_atol(D))


@pytest.mark.parametrize("bq, bg", [(1.0, 20.0), (15.0, 0.001), (0.0, 5.0), (8.0, 0.0)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_dual_is_and_dual_dis_rank_like_the_papers_product(arrays, bq, bg, dynamic):
    g, qb, gb, q = arrays
    G64, Q64, QB64, GB64 = (x.astype(np.float64) for x in (g, q, qb, gb))
    s = Q64 @ G64.T
    top1 = s.argmax(axis=1)
    product = np.ones_like(s)
    for beta, bank in ((bq, QB64), (bg, GB64)):
        if beta == 0:                                           # QB-Norm = DBNorm with beta 0
            continue
        factor = np.exp(beta * s - _lse(beta * (bank @ G64.T), axis=0))
        if dynamic:   # DualDIS: outside the activation set the factor is the raw s(q, r)
            on = _activation(bank, G64)[top1]
            factor = np.where(on[:, None], factor, s)
        product *= factor
    m = DBNorm(beta_query=bq, beta_gallery=bg, dynamic=dynamic, batch_size=7,
               memory_budget_mb=0.001, progress=False).fit(g, query_bank=qb, gallery_bank=gb)
    _assert_ranks_like(m.score(q), product, rtol=1e-4 * (1 + bq + bg))


@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_dn_centres_each_side_by_its_modalitys_reference_mean(arrays, lam):
    g, qb, gb, q = arrays
    ref = (q.astype(np.float64) - lam * qb.mean(0, dtype=np.float64)) @ \
          (g.astype(np.float64) - lam * gb.mean(0, dtype=np.float64)).T
    m = DN(lam=lam, batch_size=7).fit(g, query_bank=qb, gallery_bank=gb)
    np.testing.assert_allclose(m.score(q), ref, rtol=0, atol=4 * dot_atol(D))


@pytest.mark.parametrize("k", [1, 4, 29])
def test_csls_is_the_papers(arrays, k):
    g, qb, _, q = arrays
    s = q.astype(np.float64) @ g.astype(np.float64).T
    r_gallery = np.sort(qb.astype(np.float64) @ g.astype(np.float64).T, axis=0)[::-1][:k].mean(0)
    r_query = np.sort(s, axis=1)[:, ::-1][:, :k].mean(1)
    m = CSLS(k=k, batch_size=7, precision="float32", progress=False).fit(g, query_bank=qb)
    np.testing.assert_allclose(m.score(q), 2 * s - r_gallery[None] - r_query[:, None],
                               rtol=0, atol=8 * dot_atol(D))


# -- the paper's grids and experiment settings ------------------------------------------------
def test_db_norm_grid_size_is_what_the_docs_say():
    points = {(bq, bg) for a, b in G.DB_NORM_STAGES.values() for bq in a for bg in b}
    assert len(points) == 1319 and len(G.QB_NORM_BETA_GRID) == 60
    docs = (CONF.parent / "docs" / "baselines.md").read_text()
    assert "1,319" in docs and "60 values" in docs
    import nnn.tuning
    assert "1,319" in nnn.tuning.__doc__


def _experiment(name: str):
    return OmegaConf.load(CONF / "experiment" / f"{name}.yaml")


def test_experiments_use_the_papers_settings():
    assert OmegaConf.load(CONF / "reference" / "default.yaml").source == "train"
    assert OmegaConf.load(CONF / "reference" / "default.yaml").fraction == 0.2   # 20% of train
    for name in ("paper_table1", "paper_baselines", "paper_recall", "paper_hubness",
                 "ablation_ood_references", "ablation_alpha_k", "ablation_hubs"):
        cfg = _experiment(name)     # tuned on a held-out part of train the size of the test split
        assert cfg.tune.enabled is True and cfg.reference.tuning_size == "test", name
    sweep = _experiment("ablation_reference_size").hydra.sweeper.params
    assert sweep["reference.fraction"] == "0.1,0.2,0.5,1.0"        # full / 50% / 20% / 10%
    assert _experiment("paper_reference_size").hydra.sweeper.params["reference.fraction"] \
        == "0.1,0.2,0.5,1.0"
    k_sweep = _experiment("paper_k_sweep")
    assert k_sweep.method.alpha == 0.75 and k_sweep.eval.directions == ["t2i"]
    assert k_sweep.hydra.sweeper.params["method.k"] == "1,4,8,16,32,64,128"
    assert (GB.PAPER_K, GB.PAPER_ALPHA, GB.BIAS_NS, GB.PRECISION_KS) == (16, 0.75, (6, 10), (1, 5))


# -- the alpha x k analysis: one pass equals fresh fits ---------------------------------------
def _uneven_set(rng, n_img: int, max_caps: int, name: str) -> EmbeddingSet:
    caps = rng.integers(1, max_caps + 1, n_img)
    image = unit_rows(rng.standard_normal((n_img, 9)))
    c2i = np.repeat(np.arange(n_img), caps)
    text = unit_rows(image[c2i] + 1.2 * rng.standard_normal((len(c2i), 9)) / 3)
    return EmbeddingSet(name, image, text, c2i)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_alpha_k_grid_equals_fresh_fits_with_uneven_captions(direction):
    rng = np.random.default_rng(1)
    split, refs = _uneven_set(rng, 41, 5, "split"), _uneven_set(rng, 23, 3, "refs")
    task = RetrievalTask.from_sets(split, refs, direction)
    alphas, ks = [0.25, 0.625, 1.5], [1, 3, 16]
    table = nnn_recall_grid(task, alphas=alphas, ks=ks, batch_size=7)
    fresh = [[task.recall_at_1(task.fit(NNN(k=k, alpha=a, progress=False)), batch_size=5)
              for k in ks] for a in alphas]
    np.testing.assert_array_equal(table, fresh)


def test_alpha_k_analysis_names_ks_above_the_reference_size():
    rng = np.random.default_rng(2)
    task = RetrievalTask.from_sets(_uneven_set(rng, 17, 2, "s"), _uneven_set(rng, 19, 1, "r"), "i2t")
    with pytest.raises(ValueError, match=r"ks \[64\] are larger than the number of "
                                         r"references \(19\) in the i2t query bank.*analysis\.ks"):
        alpha_k_analysis(task, ks=[1, 64])
    assert alpha_k_analysis(task, alphas=[0.5])["axes"]["k"] == [1, 2, 4, 8, 16]   # cut at 19


# -- tuners: the k limit they name is the one that binds ---------------------------------------
def test_neighbourhood_k_limit_names_the_tuning_gallery():
    rng = np.random.default_rng(3)
    tuning, refs = _uneven_set(rng, 13, 1, "tuning"), _uneven_set(rng, 30, 2, "refs")  # 13 < 60
    with pytest.raises(ValueError, match=r"ks \[32\] exceed the tuning gallery \(13 items\)"):
        tune_csls(tuning, refs, "t2i", ks=[2, 32])
    with pytest.raises(ValueError, match=r"the tuning gallery \(13 items\)"):
        tune_neighbourhood_k("ls", tuning, refs, "t2i", ks=[16])
    res = tune("csls", tuning, refs, "t2i")
    assert res.axes["k"] == [1, 2, 4, 8] and "tuning gallery (13 items)" in res.notes[0]
    with pytest.raises(ValueError, match=r"ks \[64\] exceed the number of references \(30\) in "
                                         r"the i2t query bank"):
        tune("nnn", tuning, refs, "i2t", ks=[64])


# -- the hub-counts file ------------------------------------------------------------------------
def test_unreadable_hub_counts_are_one_clear_error(tmp_path):
    good = write_hub_counts(tmp_path / "ok.npz", {"t2i": (np.arange(50), np.arange(50)[::-1])})
    data = good.read_bytes()
    cases = {"truncated.npz": data[: len(data) // 2], "garbage.npz": b"not a zip at all"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.savez(tmp_path / "partial.npz", t2i_baseline=np.arange(3))          # no t2i_method
    np.savez(tmp_path / "foreign.npz", x=np.arange(3))                     # no counts at all
    np.savez(tmp_path / "negative.npz", t2i_baseline=-np.ones(3, int), t2i_method=np.ones(3, int))
    for name in ("truncated.npz", "garbage.npz", "partial.npz", "negative.npz"):
        with pytest.raises(ValueError, match=f"{name}' is not a readable N_k counts file"):
            read_hub_counts(tmp_path / name)
    with pytest.raises(ValueError, match="holds no N_k counts"):
        read_hub_counts(tmp_path / "foreign.npz")
    with pytest.raises(zipfile.BadZipFile):   # what numpy itself raises, turned into ValueError
        np.load(tmp_path / "truncated.npz")
    back = read_hub_counts(good)
    np.testing.assert_array_equal(back["t2i"][1], np.arange(50)[::-1])


# -- gender bias: Bias@n and occupation precision against plain loops --------------------------
def test_gender_bias_metrics_match_their_definitions():
    rng = np.random.default_rng(3)
    n_occ = 5
    occ = rng.permutation(np.repeat(np.arange(n_occ), 6))
    gender = rng.choice(["masculine", "feminine"], len(occ))
    scores = rng.standard_normal((n_occ, len(occ))).round(1)               # many ties
    got = GB.retrieval_bias_metrics(scores, gender, occ, np.arange(n_occ), ns=(3, 7),
                                    precision_ks=(1, 4))
    ranked = [sorted(range(len(occ)), key=lambda i: (-scores[c, i], i)) for c in range(n_occ)]
    for n in (3, 7):
        per = [(sum(gender[i] == "masculine" for i in r[:n])
                - sum(gender[i] == "feminine" for i in r[:n])) / n for r in ranked]
        assert got[f"Bias@{n}"] == pytest.approx(np.mean(per))
        assert got[f"AbsBias@{n}"] == pytest.approx(np.mean(np.abs(per)))
    for k in (1, 4):
        prec = [100 * np.mean([occ[i] == c for i in r[:k]]) for c, r in enumerate(ranked)]
        assert got[f"P@{k}"] == pytest.approx(np.mean(prec))
