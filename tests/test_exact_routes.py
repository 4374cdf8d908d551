"""The exact top-k routes (``nnn.methods._exact``): every route gives the float32 result.

The low-precision routes pre-select in bfloat16/float16 and re-score in float32; they are checked
against a float64 top-k written from the definition at odd sizes that cross row blocks and
reference chunks, on ties (duplicated references), on rows built to sit on the error bound
(references that the low precision cannot tell apart), on rows whose band holds too many
candidates (the float32 fallback), and on real CLIP embeddings. ``precision="auto"`` and its
probe are checked for what they choose, never for speed.
"""

from __future__ import annotations

import functools
import math
from unittest import mock

import numpy as np
import pytest
import torch

from nnn.methods import CSLS, NNN
from nnn.methods import _exact
from nnn.methods._exact import LOW_PRECISION, ROUTES, choose_route, exact_topk, probe_routes
from tolerances import dot_atol

EXACT_ROUTES = [r for r in ROUTES if r != "auto"]


def budget_for_rows(rows, cols, itemsize):
    """memory_budget_mb that makes a route take ``rows`` x rows per block."""
    return (rows * cols * itemsize + 1) / 2**20


def ref_topk(x, refs, k):
    """Sorted k largest x . refs float64 (n_x, k)."""
    s = np.asarray(x, np.float64) @ np.asarray(refs, np.float64).T
    return -np.sort(-s, axis=1)[:, :k]


def run(route, x, refs, k, *, rows=None, chunk=None):
    itemsize = 2 if route in LOW_PRECISION else 4
    budget = budget_for_rows(rows, chunk or len(refs), itemsize) if rows else 512.0
    return exact_topk(torch.from_numpy(x), torch.from_numpy(refs), k, memory_budget_mb=budget,
                      ref_batch_size=chunk, progress=False, route=route).numpy()


def norm_scale(x, refs):
    return float(np.linalg.norm(x, axis=1).max() * np.linalg.norm(refs, axis=1).max())


@pytest.mark.parametrize("route", EXACT_ROUTES)
@pytest.mark.parametrize("k,rows,chunk,n_refs", [(5, 7, None, 1013), (12, 10, 389, 1013),
                                                 (1, 53, 1013, 1013), (3, 4, 700, 1013),
                                                 (4, 11, None, 5003)])
def test_route_matches_float64_across_blocks_and_chunks(unit, route, k, rows, chunk, n_refs):
    # 1,013 references: chunks of 389 leave one of 235, too short for the pre-selection at
    # k = 12 (it then runs in float32); 700 leaves 313. 5,003 at k = 4 (and 1,013 at k = 1)
    # take g_K from unions of groups (_exact._SUPER)
    x, refs = unit(53, 24), unit(n_refs, 24)
    got = run(route, x, refs, k, rows=rows, chunk=chunk)
    assert got.dtype == np.float32 and got.shape == (53, k)
    np.testing.assert_allclose(got, ref_topk(x, refs, k), rtol=0, atol=dot_atol(24))


@pytest.mark.parametrize("route", list(LOW_PRECISION))
def test_low_precision_equals_float32_route_with_ties(unit, route):
    # every reference three times: the top-k holds each value up to three times, and the
    # pre-selection must keep every copy
    x, base = unit(41, 16), unit(457, 16)
    refs = np.repeat(base, 3, axis=0)
    got, want32 = run(route, x, refs, 20, rows=9), run("float32", x, refs, 20, rows=9)
    np.testing.assert_allclose(got, want32, rtol=0, atol=2 * dot_atol(16))
    np.testing.assert_allclose(got, ref_topk(x, refs, 20), rtol=0, atol=dot_atol(16))
    # the copies are equal in float32 as well: the top-20 holds 7 values three times, one twice
    for row in got:
        assert np.all(row[:18].reshape(6, 3) == row[:18].reshape(6, 3)[:, :1])


@pytest.mark.parametrize("route", list(LOW_PRECISION))
def test_rows_on_the_bound(route):
    # Every component of x and of each reference is the same number, so the rounding errors of
    # all d products add up (the worst case the bound allows), and 150 references lie closer
    # together than the low precision resolves: the low-precision scores of the top-k and of
    # its neighbours are tied or reversed, and only the float32 re-score orders them.
    d, k = 32, 20
    x = np.full((3, d), 1 / np.sqrt(d), np.float32)
    x[1] *= np.float32(1.0007)
    x[2, ::2] *= np.float32(0.9994)
    values = np.linspace(0.17670, 0.17690, 150, dtype=np.float32)     # 1 / sqrt(32) = 0.17678
    near = np.repeat(values[:, None], d, axis=1)
    far = np.random.default_rng(3).standard_normal((1400, d)).astype(np.float32) * 0.01
    refs = np.concatenate([far[:700], near, far[700:]])
    low = torch.from_numpy(near).to(LOW_PRECISION[route][0]).float().numpy()[:, 0]
    assert len(np.unique(low)) < 10            # the low precision merges the 150 values
    spy = mock.MagicMock(wraps=_exact._sampled_products)
    with mock.patch.object(_exact, "_sampled_products", spy):
        got = run(route, x, refs, k, rows=2)
    # the pre-selection ran (no float32 fallback): every row re-scored >= 150 candidates
    assert spy.call_count >= 2 and all(torch.bincount(c.args[2]).min() >= 150
                                      for c in spy.call_args_list)
    np.testing.assert_allclose(got, ref_topk(x, refs, k), rtol=0,
                               atol=dot_atol(d, norm_scale(x, refs)))
    np.testing.assert_allclose(got, run("float32", x, refs, k, rows=2), rtol=0,
                               atol=2 * dot_atol(d, norm_scale(x, refs)))


def test_rows_with_too_many_candidates_fall_back_to_float32(unit):
    # near-constant rows: every reference is within the band, so the row runs in float32
    x, d, k = unit(6, 20), 20, 8
    refs = np.repeat(x[:1], 2048, axis=0) + unit(2048, d) * np.float32(1e-4)
    spy = mock.MagicMock(wraps=_exact.block_topk)
    with mock.patch.object(_exact, "block_topk", spy):
        got = run("bfloat16", x, refs.astype(np.float32), k)
    assert any(len(c.args[0]) >= 1 and c.args[0].shape[1] == 2048 for c in spy.call_args_list)
    np.testing.assert_allclose(got, ref_topk(x, refs, k), rtol=0,
                               atol=dot_atol(d, norm_scale(x, refs)))


@pytest.mark.parametrize("route", list(LOW_PRECISION))
def test_non_unit_and_tiny_rows(unit, route):
    # norms far from 1 and entries below float16's normal range (its subnormals)
    x = unit(17, 10) * np.float32(7.5)
    refs = unit(1500, 10) * np.float32(0.02)
    refs[::3, :4] = np.float32(3e-6)
    got = run(route, x, refs, 9, rows=5)
    np.testing.assert_allclose(got, ref_topk(x, refs, 9), rtol=0,
                               atol=dot_atol(10, norm_scale(x, refs)))


@pytest.mark.parametrize("route", EXACT_ROUTES)
def test_nnn_bias_per_route_within_1e6_of_float32(real_flickr, route):
    images = np.load(real_flickr / "image_embeddings.npy").astype(np.float32)
    texts = np.load(real_flickr / "text_embeddings.npy").astype(np.float32)
    # 301 images against 1,398 other items (long enough rows for the pre-selection at k = 16)
    gallery, bank = images[:301], np.concatenate([texts[301:], images[301:]])
    want = NNN(k=8, alpha=1.0, k_max=16, precision="float32").fit(gallery, query_bank=bank)
    got = NNN(k=8, alpha=1.0, k_max=16, precision=route,
              memory_budget_mb=0.2).fit(gallery, query_bank=bank)
    assert got.route_ == route
    np.testing.assert_allclose(got.bias_, want.bias_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.topk_sims_, want.topk_sims_, rtol=0, atol=2 * dot_atol(
        gallery.shape[1]))


def test_auto_takes_float32_for_small_problems_and_on_cuda(monkeypatch):
    probe = mock.MagicMock(side_effect=AssertionError("no probe expected"))
    monkeypatch.setattr(_exact, "probe_routes", probe)
    assert choose_route("auto", torch.device("cpu"), 100, 20_000, 512, 8) == "float32"
    assert choose_route("auto", torch.device("cuda"), 10**5, 10**6, 512, 8) == "float32"
    assert choose_route("bfloat16", torch.device("cpu"), 100, 20_000, 512, 8) == "bfloat16"


def test_auto_uses_the_probe_for_large_problems(monkeypatch, unit):
    for route in EXACT_ROUTES:
        monkeypatch.setattr(_exact, "probe_routes", lambda dim, threads, k, r=route: {"route": r})
        assert choose_route("auto", torch.device("cpu"), 10**4, 10**6, 512, 8) == route
    # the probe runs at the same fraction of its references as the caller's k is of theirs,
    # rounded up to a power of two, so that nearby problems share one probe
    seen = []
    monkeypatch.setattr(_exact, "probe_routes",
                        lambda dim, threads, k: seen.append(k) or {"route": "float32"})
    n_refs = 8 * _exact._PROBE_REFS
    for k in (1, 8, 9, 24, 800, 1024, 1025):
        choose_route("auto", torch.device("cpu"), 10**5, n_refs, 512, k)
    assert seen == [1, 1, 2, 4, 128, 128, 256]
    choose_route("auto", torch.device("cpu"), 10**6, _exact._PROBE_REFS // 4, 512, 3)
    assert seen[-1] == 16
    # NNN records the route it ran
    monkeypatch.setattr(_exact, "probe_routes", lambda dim, threads, k: {"route": "bfloat16"})
    monkeypatch.setattr(_exact, "_PROBE_MIN_WORK", 0)
    g, r = unit(23, 8), unit(1100, 8)
    m = NNN(k=4).fit(g, query_bank=r)
    assert m.route_ == "bfloat16"
    np.testing.assert_allclose(m.topk_sims_, ref_topk(g, r, 4), rtol=0, atol=dot_atol(8))


def test_probe_chooses_a_route_and_is_cached():
    result = probe_routes(16, torch.get_num_threads(), 4)
    assert result["route"] in EXACT_ROUTES
    assert {"float32", "float32_numpy"} <= set(result["gemm_seconds"])
    assert set(result["gemm_seconds"]) | set(result["rejected"]) == set(EXACT_ROUTES)
    # stage 2 times one float32 route and every low precision that passed stage 1, if any
    low = set(result["gemm_seconds"]) & set(LOW_PRECISION)
    assert len(set(result["seconds"]) - low) == (1 if low else 0)
    assert low <= set(result["seconds"])
    assert result["route"] in result["seconds"] or (not low and result["route"] in (
        "float32", "float32_numpy"))
    assert probe_routes(16, torch.get_num_threads(), 4) is result


@pytest.mark.parametrize("low_seconds, want", [(0.5, "low"), (0.95, "float32")])
def test_probe_decides_by_the_block_top_k_not_the_gemm(monkeypatch, low_seconds, want):
    # stage 1 (GEMMs): float32 1 s, low precision 0.1 s; stage 2 (one block's top-k): float32
    # 1 s, low precision low_seconds. A low precision is chosen only when its whole block is
    # _ROUTE_MARGIN times faster, however fast its GEMM alone.
    def fake_best_time(fn, repeats=3):
        blocks = getattr(getattr(fn, "func", None), "__self__", None)
        if isinstance(blocks, _exact.LowPrecisionBlocks):
            return low_seconds
        if isinstance(blocks, _exact.Float32Blocks):
            return 1.0
        fn()                          # stage 1 runs its GEMM: the accuracy check reads it
        return 0.1 if isinstance(fn, functools.partial) else 1.0

    monkeypatch.setattr(_exact, "_best_time", fake_best_time)
    result = probe_routes.__wrapped__(8, 1, 4)
    low = set(result["gemm_seconds"]) & set(LOW_PRECISION)
    assert low and set(result["seconds"]) == {"float32", *low}
    assert result["route"] == want or (want == "low" and result["route"] in low)


def test_probe_times_nothing_when_k_is_too_large_to_pre_select(monkeypatch):
    # at this k the pre-selection would compute in float32 (c // 16 < 4 k): no block is timed
    timed = []
    real_best_time = _exact._best_time
    monkeypatch.setattr(_exact, "_best_time", lambda fn, repeats=3: timed.append(fn) or
                        real_best_time(fn, repeats))
    result = probe_routes.__wrapped__(8, 1, _exact._PROBE_REFS // (4 * _exact._GROUP) + 1)
    assert result["route"] in ("float32", "float32_numpy") and result["seconds"] == {}
    assert set(result["rejected"]) == set(LOW_PRECISION) and len(timed) == 2  # the two GEMMs
    assert all("too large a fraction" in why for why in result["rejected"].values())


def test_probe_rejects_a_gemm_that_breaks_the_bound(monkeypatch):
    # a low-precision GEMM that does not accumulate in float32 (simulated: its results are off
    # by 1e-2) must never be chosen, however fast it is
    real_mm = torch.mm

    def sloppy_mm(a, b, *, out=None):
        res = real_mm(a, b, out=out)
        if res.dtype in (torch.bfloat16, torch.float16):
            res += 1e-2
        return res

    monkeypatch.setattr(torch, "mm", sloppy_mm)
    monkeypatch.setattr(_exact, "_LOW_SPEEDUP", math.inf)   # no GEMM is dropped as slow first
    result = probe_routes.__wrapped__(8, 1, 4)
    assert result["route"] in ("float32", "float32_numpy")
    assert set(result["rejected"]) == set(LOW_PRECISION)
    assert all("does not accumulate in float32" in why for why in result["rejected"].values())


def test_precision_errors():
    with pytest.raises(ValueError, match="precision must be one of"):
        NNN(precision="fp8")
    with pytest.raises(ValueError, match="with dtype='float16' leave precision='auto'"):
        NNN(precision="bfloat16", dtype="float16", device="cuda")
    with pytest.raises(ValueError, match="with backend='faiss' leave precision='auto'"):
        NNN(precision="float32", backend="faiss")
    with pytest.raises(ValueError, match="NumPy's BLAS on the CPU"):
        CSLS(precision="float32_numpy")._search.check_device(torch.device("cuda"))


def test_bound_size_for_unit_rows():
    # e (the class docstring's bound) for unit rows in bfloat16
    x = torch.nn.functional.normalize(torch.randn(4, 512, generator=torch.Generator()
                                                  .manual_seed(1)), dim=1)
    blocks = _exact.LowPrecisionBlocks(x, x, "bfloat16", 4, 1.0)
    e = blocks.e.numpy()
    # measured |x - x~| ~ |r - r~| ~ u/2 (u = 2^-8): e ~ u, plus ~3e-5 for float32 accumulation
    assert np.all((e > 0.5 * 2**-8) & (e < 1.5 * 2**-8)), e


@pytest.mark.parametrize("route", list(LOW_PRECISION))
def test_reference_chunks_use_the_running_top_k_as_a_floor(unit, route):
    # later chunks re-score only what can still enter the top-k; copies of the same reference
    # in different chunks (ties across chunks) must all be kept
    x, base = unit(29, 16), unit(2001, 16)
    refs = np.concatenate([base, base[::-1], base[:1000]])           # 5,002 rows, 4 chunks
    def candidates(refs_part, chunk):
        spy = mock.MagicMock(wraps=_exact._sampled_products)
        with mock.patch.object(_exact, "_sampled_products", spy):
            top = run(route, x, refs_part, 6, rows=8, chunk=chunk)
        return top, sum(len(c.args[3]) for c in spy.call_args_list)

    got, pruned = candidates(refs, 1500)
    np.testing.assert_allclose(got, ref_topk(x, refs, 6), rtol=0, atol=dot_atol(16))
    alone = sum(candidates(refs[i:i + 1500], None)[1] for i in range(0, len(refs), 1500))
    assert pruned < 0.7 * alone          # without the floor each chunk keeps its own top-k band


@pytest.mark.parametrize("route", list(LOW_PRECISION))
def test_cuda_rounding_model_widens_the_band_and_stays_exact(unit, route, monkeypatch):
    # on CUDA the bound takes 2^-21 for the GEMM's accumulation and 2u for its result's
    # rounding (tensor cores truncate); run here with those numbers: the same exact top-k,
    # from more candidates
    assert _exact._rounding(torch.device("cpu")) == (2.0**-24, 1.0)
    assert _exact._rounding(torch.device("cuda")) == (2.0**-21, 2.0)
    x, refs = unit(37, 48), unit(3001, 48)

    def candidates():
        spy = mock.MagicMock(wraps=_exact._sampled_products)
        with mock.patch.object(_exact, "_sampled_products", spy):
            top = run(route, x, refs, 7, rows=10)
        return top, sum(len(c.args[3]) for c in spy.call_args_list)

    cpu_top, cpu_n = candidates()
    monkeypatch.setattr(_exact, "_rounding", lambda device: (2.0**-21, 2.0))
    cuda_top, cuda_n = candidates()
    np.testing.assert_allclose(cuda_top, ref_topk(x, refs, 7), rtol=0, atol=dot_atol(48))
    np.testing.assert_array_equal(cuda_top, cpu_top)
    assert cuda_n > cpu_n


def _matmul_settings():
    cuda = torch.backends.cuda.matmul
    return (cuda.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision,
            cuda.allow_fp16_reduced_precision_reduction,
            cuda.allow_bf16_reduced_precision_reduction)


@pytest.mark.parametrize("setting", ["default", "legacy", "new"])
def test_ieee_gemms_sets_and_restores_the_process_settings(setting):
    cuda, mkldnn = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
    saved = _matmul_settings()
    try:
        if setting == "legacy":
            torch.set_float32_matmul_precision("high")
        elif setting == "new":
            cuda.fp32_precision, mkldnn.fp32_precision = "tf32", "bf16"
        before = _matmul_settings()
        with _exact._ieee_gemms():
            assert _matmul_settings() == ("ieee", "ieee", False, False)
        assert _matmul_settings() == before
        if setting != "new":          # torch refuses the legacy query after a mix of its APIs
            assert torch.get_float32_matmul_precision() == (
                "high" if setting == "legacy" else "highest")
        with pytest.raises(RuntimeError, match="inside"), _exact._ieee_gemms():
            raise RuntimeError("inside")
        assert _matmul_settings() == before
    finally:
        cuda.fp32_precision, mkldnn.fp32_precision = saved[:2]
        cuda.allow_fp16_reduced_precision_reduction = saved[2]
        cuda.allow_bf16_reduced_precision_reduction = saved[3]


@pytest.mark.parametrize("route", list(LOW_PRECISION))
def test_low_precision_routes_exact_when_the_process_allows_bf16_matmuls(unit, route):
    # a process that lets float32 matmuls run in bfloat16: the re-scoring's float32 products
    # (here: the leftover columns and short chunks) stay float32. Where torch's CPU matmul
    # ignores the setting (MKL's sgemm on the 2-core Zen 4 this was written on gave the same
    # product either way) this would pass without the guard (``_ieee_gemms``) too
    mkldnn = torch.backends.mkldnn.matmul
    saved = mkldnn.fp32_precision
    x, refs = unit(23, 40), unit(2003, 40)
    try:
        mkldnn.fp32_precision = "bf16"
        got = run(route, x, refs, 5, rows=6, chunk=1001)
        assert mkldnn.fp32_precision == "bf16"
    finally:
        mkldnn.fp32_precision = saved
    np.testing.assert_allclose(got, ref_topk(x, refs, 5), rtol=0, atol=dot_atol(40))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("route", ["float32", *LOW_PRECISION])
@pytest.mark.parametrize("rows,chunk", [(7, None), (10, 389), (53, None)])
def test_cuda_routes_match_float64(unit, route, rows, chunk):
    # on the GPU: odd row blocks, reference chunks (one too short to pre-select), ties
    x, base = unit(53, 24), unit(1013, 24)
    refs = np.concatenate([base, base[:400]])
    itemsize = 2 if route in LOW_PRECISION else 4
    got = exact_topk(torch.from_numpy(x).cuda(), torch.from_numpy(refs).cuda(), 12,
                     memory_budget_mb=budget_for_rows(rows, chunk or len(refs), itemsize),
                     ref_batch_size=chunk, progress=False, route=route)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), ref_topk(x, refs, 12), rtol=0,
                               atol=dot_atol(24))
