"""NNN against a float64 NumPy reference written from the formula, plus its table, fold, FAISS
backends, input checks and effect on hubs (synthetic) and on real CLIP embeddings."""

from __future__ import annotations

import sys

import faiss
import numpy as np
import pytest
import torch

from nnn.errors import MissingResourceError
from nnn.methods import NNN, Identity, ReferenceIndex
from nnn.methods._exact import block_topk, exact_topk
from nnn.methods._topk import (default_nlist, default_nprobe, faiss_index, gpu_faiss_available,
                               ivf_topk)
from tolerances import EPS32, assert_topk_ids, dot_atol

# odd sizes: no chunk size below divides them
N_G, N_R, N_Q, D = 53, 1013, 29, 12
# float32 rounding on any CPU (tolerances.py): a similarity of unit rows is off by SIM_ATOL, a
# bias (float64 mean of float32 similarities, rounded) by alpha * SIM_ATOL + EPS32, a score
# s - bias by both and one more rounding
SIM_ATOL = dot_atol(D)


def bias_atol(alpha):
    return alpha * SIM_ATOL + EPS32


def score_atol(alpha):
    return SIM_ATOL + bias_atol(alpha) + 2 * EPS32


def ref_bias(gallery, refs, k, alpha):
    """alpha * mean of the k largest s(q', r) over references q', float64 (n_g,)."""
    s = gallery.astype(np.float64) @ refs.astype(np.float64).T               # (n_g, n_r)
    return alpha * np.sort(s, axis=1)[:, ::-1][:, :k].mean(axis=1)


def ref_scores(queries, gallery, bias):
    return queries.astype(np.float64) @ gallery.astype(np.float64).T - bias[None, :]


def budget_for_rows(rows, cols, itemsize=4):
    """memory_budget_mb that makes the exact backend take ``rows`` gallery rows per block."""
    return (rows * cols * itemsize + 1) / 2**20


@pytest.fixture
def data(unit):
    return unit(N_G, D), unit(N_R, D), unit(N_Q, D)


@pytest.mark.parametrize("ref_batch_size", [None, 397])
@pytest.mark.parametrize("k,alpha", [(1, 0.75), (5, 0.5), (40, 1.25)])
def test_bias_score_search_match_reference(data, k, alpha, ref_batch_size):
    g, r, q = data
    chunk = ref_batch_size or N_R
    m = NNN(k=k, alpha=alpha, batch_size=8, ref_batch_size=ref_batch_size,
            memory_budget_mb=budget_for_rows(7, chunk)).fit(g, query_bank=r)
    want_bias = ref_bias(g, r, k, alpha)
    assert m.bias_.dtype == np.float32 and m.bias_.shape == (N_G,)
    np.testing.assert_allclose(m.bias_, want_bias, rtol=0, atol=bias_atol(alpha))
    want = ref_scores(q, g, want_bias)
    np.testing.assert_allclose(m.score(q), want, rtol=0, atol=score_atol(alpha))
    scores, ids = m.search(q, top_k=10)
    assert_topk_ids(ids, want, atol=2 * score_atol(alpha))
    np.testing.assert_allclose(scores, np.take_along_axis(want, ids, 1), rtol=0,
                               atol=score_atol(alpha))
    assert ids.dtype == np.int64 and scores.dtype == np.float32


def test_topk_table_is_sorted_reference_similarities(data):
    g, r, _ = data
    m = NNN(k=3, k_max=50, memory_budget_mb=budget_for_rows(11, N_R)).fit(g, query_bank=r)
    want = np.sort(g.astype(np.float64) @ r.T.astype(np.float64), axis=1)[:, ::-1][:, :50]
    assert m.topk_sims_.shape == (N_G, 50) and m.k_max_ == 50 and m.n_references_ == N_R
    np.testing.assert_allclose(m.topk_sims_, want, rtol=0, atol=SIM_ATOL)


@pytest.mark.parametrize("n_cols", [37, 1000, 1601, 5003])
def test_block_topk_exact_with_ties(rng, n_cols):
    # integer-valued rows have many ties; the grouped pre-selection must still be exact
    for sims in (rng.standard_normal((13, n_cols)), rng.integers(0, 6, (13, n_cols))):
        sims = sims.astype(np.float32)
        s = torch.from_numpy(sims)
        for k in (1, 9, 25):
            got = torch.sort(block_topk(s, k), dim=1, descending=True).values.numpy()
            np.testing.assert_array_equal(got, np.sort(sims, axis=1)[:, ::-1][:, :k])


def test_exact_topk_across_blocks_and_chunks(unit):
    x, refs = unit(31, 9), unit(2999, 9)
    want = np.sort(x.astype(np.float64) @ refs.T.astype(np.float64), axis=1)[:, ::-1][:, :70]
    for chunk in (None, 1200, 71, 5):
        got = exact_topk(torch.from_numpy(x), torch.from_numpy(refs), 70,
                         memory_budget_mb=budget_for_rows(4, chunk or 2999), ref_batch_size=chunk,
                         progress=False)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=dot_atol(9))


def test_torch_input_and_no_mutation(data):
    g, r, q = data
    scale = np.float32(3.0)
    g2, r2, q2 = g * scale, r * scale, q * scale
    copies = [a.copy() for a in (g2, r2, q2)]
    m = NNN(k=5, normalize=True).fit(torch.from_numpy(g2), query_bank=torch.from_numpy(r2))
    got = m.score(torch.from_numpy(q2))
    for a, c in zip((g2, r2, q2), copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(got, ref_scores(q, g, ref_bias(g, r, 5, 0.75)), atol=1e-5)
    m.search(q2)
    np.testing.assert_array_equal(q2, copies[2])


def test_non_normalised_input_warns(data):
    g, r, q = data
    with pytest.warns(UserWarning, match="not L2-normalised"):
        NNN(k=5).fit(2 * g, query_bank=r)


def test_grid_and_with_params_equal_per_k_refits(data):
    g, r, q = data
    ks, alphas = [1, 2, 7, 16, 64], [0.0, 0.25, 0.875, 1.5]
    m = NNN(k=7, alpha=0.5, k_max=64, memory_budget_mb=budget_for_rows(9, N_R)).fit(
        g, query_bank=r)
    grid = m.bias_grid(ks, alphas)
    assert grid.shape == (len(alphas), len(ks), N_G) and grid.dtype == np.float32
    for j, k in enumerate(ks):
        fresh = NNN(k=k, alpha=1.0).fit(g, query_bank=r).bias_
        for i, a in enumerate(alphas):
            # another memory budget: other GEMM shapes, so other float32 similarities
            np.testing.assert_allclose(grid[i, j], a * fresh, rtol=0, atol=bias_atol(a) + EPS32)
            np.testing.assert_allclose(grid[i, j], ref_bias(g, r, k, a), rtol=0,
                                       atol=bias_atol(a))
    other = m.with_params(k=16, alpha=1.25)
    assert other.topk_sims_ is m.topk_sims_ and (other.k, other.alpha) == (16, 1.25)
    assert (m.k, m.alpha) == (7, 0.5)  # the original is untouched
    np.testing.assert_allclose(other.bias_, ref_bias(g, r, 16, 1.25), rtol=0,
                               atol=bias_atol(1.25))
    np.testing.assert_allclose(other.score(q), ref_scores(q, g, ref_bias(g, r, 16, 1.25)),
                               atol=1e-5)
    np.testing.assert_allclose(m.with_params(alpha=0.5).bias_, m.bias_)
    for i, a in enumerate(alphas):  # the grid holds the very biases of with_params copies
        for j, k in enumerate(ks):
            np.testing.assert_array_equal(grid[i, j], m.bias_for(k, a))
            np.testing.assert_array_equal(grid[i, j], m.with_params(k=k, alpha=a).bias_)


def test_table_k_limits(data):
    g, r, _ = data
    m = NNN(k=4, k_max=10).fit(g, query_bank=r)
    with pytest.raises(ValueError, match=r"k=11 .*k_max_=10"):
        m.with_params(k=11)
    with pytest.raises(ValueError, match=r"k=11 .*k_max_=10"):
        m.bias_grid([2, 11], [0.5])
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0, got -0.5"):
        m.bias_grid([2], [-0.5])
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0, got -1"):
        m.with_params(alpha=-1)
    with pytest.raises(RuntimeError, match="not fitted"):
        NNN().bias_grid([1], [1.0])


def test_fold_reproduces_scores_and_faiss_ranking(data):
    g, r, q = data
    m = NNN(k=9, alpha=0.75).fit(g, query_bank=r)
    gallery_aug, fold_queries = m.fold()
    qa = fold_queries(q)
    assert gallery_aug.shape == (N_G, D + 1) and qa.shape == (N_Q, D + 1)
    # NumPy's (D + 1)-term dot products of rows with |[q, 1]| |[r, -b]| <= 2 against torch's
    fold_atol = dot_atol(D + 1, 2) + score_atol(0.75)
    np.testing.assert_allclose(qa @ gallery_aug.T, m.score(q), rtol=0, atol=fold_atol)
    index = faiss.IndexFlatIP(D + 1)
    index.add(gallery_aug)
    dist, ids = index.search(qa, 10)
    scores, want_ids = m.search(q, 10)
    assert_topk_ids(ids, m.score(q), atol=2 * fold_atol)  # FAISS's BLAS rounds its own way
    np.testing.assert_allclose(dist, scores, rtol=0, atol=fold_atol)


def test_faiss_flat_and_full_probe_ivf_equal_exact(data):
    g, r, q = data
    exact = NNN(k=20, k_max=40).fit(g, query_bank=r)
    flat = NNN(k=20, k_max=40, backend="faiss").fit(g, query_bank=r)
    nlist = default_nlist(N_R)
    ivf = NNN(k=20, k_max=40, backend="faiss", index="ivf", nprobe=nlist).fit(g, query_bank=r)
    for m in (flat, ivf):
        # FAISS's float32 similarities against torch's: 2 * SIM_ATOL = 3.1e-6 < 1e-5
        np.testing.assert_allclose(m.topk_sims_, exact.topk_sims_, atol=1e-5)
        np.testing.assert_allclose(m.bias_, exact.bias_, atol=1e-5)
        assert_topk_ids(m.search(q, 5)[1], exact.score(q), atol=2 * (1e-5 + score_atol(0.75)))
    # float16 storage: each similarity off by at most ~2 * 2^-11 for unit vectors
    ivf16 = NNN(k=20, k_max=40, backend="faiss", index="ivf_fp16", nprobe=nlist).fit(
        g, query_bank=r)
    np.testing.assert_allclose(ivf16.topk_sims_, exact.topk_sims_, atol=1e-3)
    np.testing.assert_allclose(ivf16.bias_, exact.bias_, atol=1e-3)
    # an explicit nlist larger than the references is clamped
    clamped = NNN(k=2, backend="faiss", index="ivf", nlist=10**6, nprobe=10**6).fit(
        g[:5], query_bank=r[:40])
    np.testing.assert_allclose(clamped.bias_, NNN(k=2).fit(g[:5], query_bank=r[:40]).bias_,
                               atol=1e-5)


def test_prebuilt_reference_index_equals_fresh_build_and_exact(data, unit):
    g, r, q = data
    g2 = unit(41, D)                                  # a second gallery, same index
    nlist = default_nlist(N_R)
    for index, tol in (("flat", 1e-5), ("ivf", 1e-5), ("ivf_fp16", 1e-3)):
        ref_index = ReferenceIndex(r, index=index)
        assert (len(ref_index), ref_index.dim, ref_index.index) == (N_R, D, index)
        assert ref_index.nlist == (None if index == "flat" else nlist)
        for gal in (g, g2, g):
            # nprobe = nlist: every list searched, so IVF is exact (up to float16 storage)
            m = NNN(k=20, k_max=40, backend="faiss", nprobe=nlist).fit(gal, query_bank=ref_index)
            want = np.sort(gal.astype(np.float64) @ r.T.astype(np.float64), axis=1)[:, ::-1]
            np.testing.assert_allclose(m.topk_sims_, want[:, :40], atol=tol)
            np.testing.assert_allclose(m.bias_, ref_bias(gal, r, 20, 0.75), atol=tol)
            assert m.n_references_ == N_R
        assert ref_index.faiss_index.ntotal == N_R  # searching leaves the index as built
    # a partial probe: the reused index gives what a per-fit build with the same settings gives
    ref_index = ReferenceIndex(r, index="ivf", nlist=37)
    for gal in (g, g2):
        fresh = NNN(k=9, backend="faiss", index="ivf", nlist=37, nprobe=4).fit(gal, query_bank=r)
        reused = NNN(k=9, backend="faiss", nprobe=4).fit(gal, query_bank=ref_index)
        np.testing.assert_allclose(reused.topk_sims_, fresh.topk_sims_, rtol=0, atol=SIM_ATOL)
        assert_topk_ids(reused.search(q, 5)[1], fresh.score(q), atol=4 * score_atol(0.75))


def test_prebuilt_index_settings_win_and_short_rows_are_exact(data, caplog):
    g, r, _ = data
    ref_index = ReferenceIndex(r, index="ivf", nlist=64)
    # NNN's own index/nlist do not apply to a prebuilt index (documented): same as nlist=64
    m = NNN(k=500, backend="faiss", index="flat", nlist=5, nprobe=1).fit(g, query_bank=ref_index)
    assert "fewer than k=500 references" in caplog.text  # 1 of 64 lists: completed exactly
    np.testing.assert_allclose(m.topk_sims_, NNN(k=500).fit(g, query_bank=r).topk_sims_,
                               atol=1e-5)


def test_prebuilt_index_input_checks(data, unit):
    g, r, _ = data
    ref_index = ReferenceIndex(r, index="ivf")
    with pytest.raises(ValueError, match="ReferenceIndex of dimension 12 but the gallery has "
                                         "dimension 11"):
        NNN(backend="faiss").fit(unit(N_G, 11), query_bank=ref_index)
    with pytest.raises(ValueError, match=r"ReferenceIndex can only be NNN's query_bank with "
                                         r"backend='faiss' \(got .*backend='exact'\)"):
        NNN(k=5).fit(g, query_bank=ref_index)
    with pytest.raises(ValueError, match=rf"k=2000 is larger .*query_bank has {N_R} rows"):
        NNN(k=2000, backend="faiss").fit(g, query_bank=ref_index)
    with pytest.raises(ValueError, match="refs has dimension|refs must be 2-D"):
        ReferenceIndex(r[0])
    with pytest.raises(ValueError, match="index must be one of .*got 'hnsw'"):
        ReferenceIndex(r, index="hnsw")
    with pytest.raises(ValueError, match="nlist must be a positive integer, got 0"):
        ReferenceIndex(r, nlist=0)
    with pytest.raises(ValueError, match="use_gpu_faiss must be one of .*got 'yes'"):
        ReferenceIndex(r, use_gpu_faiss="yes")
    if not gpu_faiss_available():
        with pytest.raises(ValueError, match="use_gpu_faiss=True but the installed FAISS"):
            ReferenceIndex(r, use_gpu_faiss=True)
    with pytest.warns(UserWarning, match="refs: .*not L2-normalised"):
        ReferenceIndex(2 * r, index="flat")
    # normalize=True normalises a copy; the caller's array is neither aliased nor changed
    r2 = 2 * r
    scaled = ReferenceIndex(r2, index="flat", normalize=True)
    np.testing.assert_array_equal(r2, 2 * r)
    np.testing.assert_allclose(NNN(k=5, backend="faiss").fit(g, query_bank=scaled).bias_,
                               ref_bias(g, r, 5, 0.75), atol=1e-5)
    for wrap in (np.asarray, torch.from_numpy):  # a CPU tensor shares memory like an array
        r3 = r.copy()
        kept = ReferenceIndex(wrap(r3), index="ivf", nlist=4)
        r3[:] = 0
        np.testing.assert_allclose(kept.refs, r)


def ivf_lists(idx):
    """Centroids (nlist, d) float64 and each list's reference ids, read from a FAISS IVF index."""
    lists = idx.invlists
    ids = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
           for i in range(idx.nlist)]
    return idx.quantizer.reconstruct_n(0, idx.nlist).astype(np.float64), ids


@pytest.mark.parametrize("index,tol", [("ivf", 1e-5), ("ivf_fp16", 1e-3)])
def test_ivf_topk_is_topk_over_probed_lists(unit, index, tol):
    # reference from the definition: for each row, the nprobe lists whose centroids are most
    # similar to it, then the k largest similarities to the references in those lists
    x, refs = unit(61, 10), unit(1501, 10)
    idx = faiss_index(refs, index=index, nlist=37)
    centroids, members = ivf_lists(idx)
    sims = x.astype(np.float64) @ refs.T.astype(np.float64)
    for nprobe, k in ((3, 20), (7, 90), (37, 45)):
        to_centroids = x.astype(np.float64) @ centroids.T
        probed = np.argsort(-to_centroids, axis=1)[:, :nprobe]
        if nprobe < 37:  # which lists FAISS probes is no near-tie that its rounding could flip
            ranked = -np.sort(-to_centroids, axis=1)
            norm = np.linalg.norm(centroids, axis=1).max()
            assert (ranked[:, nprobe - 1] - ranked[:, nprobe]).min() > 2 * dot_atol(10, norm)
        want = np.full((len(x), k), -np.inf)
        for i, lists_i in enumerate(probed):
            cand = np.sort(sims[i, np.concatenate([members[j] for j in lists_i])])[::-1][:k]
            want[i, :len(cand)] = cand
        threads = torch.get_num_threads()
        # a tiny memory budget: rows are taken in blocks of 1-2
        got = ivf_topk(idx, x, k, nprobe, memory_budget_mb=budget_for_rows(1, nprobe * 200))
        assert torch.get_num_threads() == threads
        assert got.shape == (len(x), k) and got.dtype == np.float32
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], atol=tol)
        idx.nprobe = nprobe  # FAISS's own search of the same lists finds the same values
        faiss_sims, faiss_ids = idx.search(x, k)
        np.testing.assert_allclose(got[finite], faiss_sims[finite], atol=1e-5)
        assert (faiss_ids[~finite] == -1).all()


def test_ivf_short_rows_are_completed_exactly(data, caplog):
    g, r, _ = data
    exact = NNN(k=500).fit(g, query_bank=r)
    with caplog.at_level("WARNING", logger="nnn.methods._topk"):
        ivf = NNN(k=500, backend="faiss", index="ivf", nlist=64, nprobe=1).fit(g, query_bank=r)
    assert f"{N_G} of {N_G} gallery items have fewer than k=500 references" in caplog.text
    np.testing.assert_allclose(ivf.topk_sims_, exact.topk_sims_, atol=1e-5)


def test_default_nprobe_rule():
    # scan max(4 k, 512) references on average: 6 of 1,376 lists at 118,350 references and
    # k = 128; every list for small reference sets; at least 1, at most nlist
    assert default_nlist(118_350) == 1376 and default_nprobe(118_350, 1376, 128) == 6
    assert default_nprobe(118_350, 1376, 16) == 6
    assert default_nprobe(118_350, 1376, 512) == 24
    assert default_nprobe(591_753, default_nlist(591_753), 128) == 3
    assert default_nlist(500) == 12 and default_nprobe(500, 12, 16) == 12
    assert default_nprobe(10**9, 10, 1) == 1 and default_nprobe(100, 5, 200) == 5


def _bad_fit_cases():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((20, 6)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    r = g[::-1].copy()
    nan_g = g.copy()
    nan_g[3, 2] = np.nan
    inf_r = r.copy()
    inf_r[0, 0] = np.inf
    return [
        (dict(), dict(gallery=g, query_bank=r[:, :5]), "query_bank has dimension 5"),
        (dict(), dict(gallery=nan_g, query_bank=r), "gallery contains NaN or Inf"),
        (dict(), dict(gallery=g, query_bank=inf_r), "query_bank contains NaN or Inf"),
        (dict(), dict(gallery=g[:0], query_bank=r), r"gallery is empty \(shape \(0, 6\)\)"),
        (dict(), dict(gallery=g, query_bank=r[:0]), r"query_bank is empty"),
        (dict(), dict(gallery=g[0], query_bank=r), r"gallery must be 2-D .*shape \(6,\)"),
        (dict(), dict(gallery=(g * 10).astype(np.int64), query_bank=r), "dtype int64"),
        (dict(), dict(gallery=g), "NNN needs query_bank="),
        (dict(k=21), dict(gallery=g, query_bank=r), r"k=21 is larger .*query_bank has 20 rows"),
        (dict(k=2, k_max=30), dict(gallery=g, query_bank=r), r"k_max=30 is larger .*20 rows"),
    ]


@pytest.mark.parametrize("kwargs,fit_args,match", _bad_fit_cases())
def test_bad_fit_input_is_named(kwargs, fit_args, match):
    with pytest.raises(ValueError, match=match):
        NNN(**kwargs).fit(**fit_args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=-0.25), "alpha must be a finite number >= 0, got -0.25"),
    (dict(alpha="x"), "alpha must be a number, got 'x'"),
    (dict(k=0), "k must be a positive integer, got 0"),
    (dict(k=2.0), "k must be a positive integer, got 2.0"),
    (dict(k_max=-3), "k_max must be a positive integer, got -3"),
    (dict(backend="annoy"), "backend must be one of .*got 'annoy'"),
    (dict(backend="faiss", index="hnsw"), "index must be one of .*got 'hnsw'"),
    (dict(dtype="float64"), "dtype must be one of .*got 'float64'"),
    (dict(dtype="float16"), "dtype='float16' needs a CUDA device"),
    (dict(dtype="bfloat16", device="cpu"), "dtype='bfloat16' needs a CUDA device"),
    (dict(backend="faiss", dtype="float16", device="cuda"), "applies to backend='exact' only"),
    (dict(nprobe=0), "nprobe must be a positive integer, got 0"),
    (dict(nlist=0), "nlist must be a positive integer, got 0"),
    (dict(ref_batch_size=0), "ref_batch_size must be a positive integer, got 0"),
    (dict(memory_budget_mb=0), "memory_budget_mb must be a finite number > 0"),
    (dict(use_gpu_faiss="yes"), "use_gpu_faiss must be one of .*got 'yes'"),
    (dict(use_gpu_faiss=1), "use_gpu_faiss must be one of .*got 1"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NNN(**kwargs)


def test_queries_are_checked(data):
    g, r, q = data
    m = NNN(k=3).fit(g, query_bank=r)
    with pytest.raises(ValueError, match="queries has dimension 11"):
        m.score(q[:, :11])
    with pytest.raises(ValueError, match="top_k=54 is larger than the gallery size"):
        m.search(q, top_k=54)
    with pytest.raises(RuntimeError, match="not fitted"):
        NNN().score(q)


def test_normalize_true_normalises(data):
    g, r, q = data
    plain = NNN(k=5).fit(g, query_bank=r)
    scaled = NNN(k=5, normalize=True).fit(g * 4, query_bank=r * 0.5)
    # normalising g * 4 and r / 2 rounds each entry again (relative EPS32)
    np.testing.assert_allclose(scaled.bias_, plain.bias_, rtol=0, atol=2 * bias_atol(0.75)
                               + 2 * EPS32)
    np.testing.assert_allclose(scaled.score(q * 7), plain.score(q), atol=1e-5)


def recall_at_1(method, queries) -> float:
    """Percent of queries i whose top-1 gallery item is item i."""
    top1 = method.search(queries, top_k=1)[1][:, 0]
    return 100.0 * float(np.mean(top1 == np.arange(len(queries))))


def test_nnn_fixes_synthetic_hubs(hub_retrieval):
    gallery, queries, refs, hubs = hub_retrieval()
    base = Identity().fit(gallery)
    nnn = NNN(k=16, alpha=0.75).fit(gallery, query_bank=refs)
    hub_share = lambda m: np.isin(m.search(queries, 1)[1][:, 0], hubs).mean()
    assert recall_at_1(nnn, queries) >= recall_at_1(base, queries) + 10
    assert hub_share(base) > 0.15 and hub_share(nnn) < 0.05
    assert nnn.bias_[hubs].min() > np.delete(nnn.bias_, hubs).max()


def test_nnn_raises_recall_on_real_clip_embeddings(real_flickr):
    image = np.load(real_flickr / "image_embeddings.npy")
    text = np.load(real_flickr / "text_embeddings.npy")
    ref_text, eval_image, eval_text = text[:500], image[500:], text[500:]
    base = recall_at_1(Identity().fit(eval_image), eval_text)
    nnn = recall_at_1(NNN(k=16, alpha=0.75).fit(eval_image, query_bank=ref_text), eval_text)
    # measured: text->image R@1 79.4 -> 83.6 on pairs 500..999 with captions 0..499 as references;
    # the closest call between a correct top-1 and its runner-up is 1.5e-4 (float64), far above
    # the float32 rounding of 768-term dot products (~sqrt(768) * EPS32 = 3e-6 typical)
    assert base == pytest.approx(79.4, abs=0.05)
    assert nnn >= base + 2.0, (base, nnn)


def test_default_ivf_on_real_clip_embeddings(real_flickr):
    # the library's default IVF settings for 500 references (12 lists, all probed: below ~512
    # references the lists do not hold a row's neighbours) give exact NNN's R@1, both directions
    image = np.load(real_flickr / "image_embeddings.npy")
    text = np.load(real_flickr / "text_embeddings.npy")
    for gallery, queries, bank in ((image[500:], text[500:], text[:500]),
                                   (text[500:], image[500:], image[:500])):
        exact = NNN(k=16, alpha=0.75).fit(gallery, query_bank=bank)
        ivf = NNN(k=16, alpha=0.75, backend="faiss", index="ivf").fit(gallery, query_bank=bank)
        # FAISS's and torch's 768-term float32 dot products: ~sqrt(768) * EPS32 = 3e-6 apart
        # typically (each bias averages 16); R@1's closest call is 1.5e-4 (see above)
        np.testing.assert_allclose(ivf.bias_, exact.bias_, atol=1e-5)
        assert recall_at_1(ivf, queries) == recall_at_1(exact, queries)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-3), ("bfloat16", 2e-2)])
def test_cuda_exact_backend(data, dtype, tol):
    g, r, q = data
    m = NNN(k=20, device="cuda", dtype=dtype).fit(g, query_bank=r)
    np.testing.assert_allclose(m.bias_, ref_bias(g, r, 20, 0.75), atol=tol)
    assert m.score(q).shape == (N_Q, N_G)


def test_concurrent_ivf_fits_agree_and_restore_torch_threads(unit):
    import threading

    refs, g = unit(3001, 16), unit(203, 16)
    idx = ReferenceIndex(refs, index="ivf")
    expected = NNN(k=8, backend="faiss").fit(g, query_bank=idx).bias_
    threads_before = torch.get_num_threads()
    biases = []
    workers = [threading.Thread(target=lambda: biases.append(
        NNN(k=8, backend="faiss").fit(g, query_bank=idx).bias_)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert torch.get_num_threads() == threads_before
    for b in biases:  # the thread count may change BLAS's summation order, nothing more
        np.testing.assert_allclose(b, expected, rtol=0, atol=0.75 * dot_atol(16) + 2 * EPS32)


def test_missing_faiss_names_the_extra(monkeypatch, unit):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    g, r = unit(20, 8), unit(50, 8)
    with pytest.raises(ImportError, match=r"nnn-hubness\[cpu\].*nnn-hubness\[gpu\]") as err:
        NNN(k=2, backend="faiss").fit(g, query_bank=r)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, MissingResourceError)  # a user error: run.py prints one line
