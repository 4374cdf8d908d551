"""The GPU FAISS code paths, run on the CPU through a simulated GPU layer.

faiss-cpu has no ``StandardGpuResources`` / ``index_cpu_to_gpu`` / ``index_gpu_to_cpu``, and no
session here has GPU FAISS, so without this file those lines would first run on a GPU machine.
``gpu_faiss`` adds the three names to the real ``faiss`` module: ``index_cpu_to_gpu`` returns a
copy of the CPU index that enforces GPU FAISS's limits (k and nprobe at most 2048), and
``index_gpu_to_cpu`` copies it back. Flat results must equal the CPU index's (the same FAISS
search of the same vectors); IVF ones agree to float32 rounding, because on the CPU the IVF
top-k comes from ``ivf_topk`` and on the GPU from FAISS's own search of the same lists.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnn.index import NNNIndex
from nnn.methods import NNN, ReferenceIndex
from nnn.methods._topk import GPU_FAISS_MAX_K, gpu_faiss_available
from tests.conftest import unit_rows
from tests.tolerances import dot_atol

faiss = pytest.importorskip("faiss")

D, K = 10, 6


class _SimulatedGpuIndex:
    """A CPU index's copy standing in for its GPU FAISS version (attributes pass through)."""

    def __init__(self, cpu_index):
        object.__setattr__(self, "cpu", faiss.clone_index(cpu_index))
        object.__setattr__(self, "added", 0)

    def search(self, x, k):
        if k > GPU_FAISS_MAX_K or getattr(self.cpu, "nprobe", 1) > GPU_FAISS_MAX_K:
            raise RuntimeError("GPU FAISS: k and nprobe must be <= 2048")  # as GPU FAISS does
        return self.cpu.search(x, k)

    def add(self, x):
        object.__setattr__(self, "added", self.added + len(x))
        self.cpu.add(x)

    def __getattr__(self, name):
        return getattr(self.cpu, name)

    def __setattr__(self, name, value):
        if name == "gpu_resources":
            object.__setattr__(self, name, value)
        else:
            setattr(self.cpu, name, value)


@pytest.fixture
def gpu_faiss(monkeypatch):
    """The simulated GPU layer on the real ``faiss`` module; returns the list of GPU copies."""
    copies = []

    def to_gpu(resources, device, index):
        assert isinstance(resources, faiss.StandardGpuResources) and device == 0
        copies.append(_SimulatedGpuIndex(index))
        return copies[-1]

    def to_cpu(index):
        assert isinstance(index, _SimulatedGpuIndex), "only a GPU index is copied back"
        return faiss.clone_index(index.cpu)

    monkeypatch.setattr(faiss, "StandardGpuResources", type("StandardGpuResources", (), {}),
                        raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", to_cpu, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    return copies


@pytest.fixture
def data():
    rng = np.random.default_rng(11)
    return tuple(unit_rows(rng.standard_normal((n, D))) for n in (413, 251, 37))


def test_simulation_makes_gpu_faiss_available(gpu_faiss):
    assert gpu_faiss_available()


@pytest.mark.parametrize("index", ["flat", "ivf", "ivf_fp16"])
def test_reference_index_on_gpu_equals_cpu_and_round_trips(tmp_path, gpu_faiss, data, index):
    g, r, _ = data
    cpu = ReferenceIndex(r, index=index, nlist=7, use_gpu_faiss=False)
    gpu = ReferenceIndex(r, index=index, nlist=7, use_gpu_faiss=True)
    assert gpu.use_gpu and not cpu.use_gpu and gpu_faiss[-1].added == len(r)
    want = cpu.topk(g, K, nprobe=3)
    np.testing.assert_allclose(gpu.topk(g, K, nprobe=3), want, rtol=0, atol=dot_atol(D))
    gpu.save(tmp_path / "ri")                               # copied back to the CPU to write
    for use in (True, False):
        loaded = ReferenceIndex.load(tmp_path / "ri", expected_refs=r, use_gpu_faiss=use)
        assert loaded.use_gpu is use
        np.testing.assert_allclose(loaded.topk(g, K, nprobe=3), want, rtol=0, atol=dot_atol(D))
    if index == "flat":
        np.testing.assert_array_equal(gpu.topk(g, K), want)
    auto = ReferenceIndex.load(tmp_path / "ri", use_gpu_faiss="auto")
    assert auto.use_gpu


def test_nnn_faiss_backend_on_gpu_equals_cpu(gpu_faiss, data):
    g, r, q = data
    kw = dict(k=K, alpha=0.7, backend="faiss", index="ivf", nlist=5, nprobe=5)
    on_gpu = NNN(**kw, use_gpu_faiss=True).fit(g, r)
    on_cpu = NNN(**kw, use_gpu_faiss=False).fit(g, r)
    assert gpu_faiss and isinstance(gpu_faiss[-1], _SimulatedGpuIndex)
    np.testing.assert_allclose(on_gpu.bias_, on_cpu.bias_, rtol=0, atol=dot_atol(D))
    prebuilt = ReferenceIndex(r, index="flat", use_gpu_faiss=True)
    np.testing.assert_array_equal(NNN(k=K, alpha=0.7, backend="faiss").fit(g, prebuilt).bias_,
                                  NNN(k=K, alpha=0.7, backend="faiss", index="flat",
                                      use_gpu_faiss=False).fit(g, r).bias_)


def test_gpu_k_limit_is_a_clear_error_before_any_search(gpu_faiss):
    rng = np.random.default_rng(2)
    g, r = unit_rows(rng.standard_normal((5, 4))), unit_rows(rng.standard_normal((2100, 4)))
    with pytest.raises(ValueError, match="GPU FAISS returns at most 2048 neighbours"):
        ReferenceIndex(r, use_gpu_faiss=True).topk(g, 2049)
    with pytest.raises(ValueError, match="GPU FAISS returns at most 2048 neighbours"):
        NNN(k=2049, backend="faiss", use_gpu_faiss=True).fit(g, r)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_nnn_index_on_gpu_equals_cpu_and_round_trips(tmp_path, gpu_faiss, data, kind):
    g, r, q = data
    kw = dict(k=K, alpha=0.7, kind=kind, nlist=9, nprobe=4, progress=False)
    cpu = NNNIndex.build(g, r, **kw)
    gpu = NNNIndex.build(g, r, **kw, use_gpu=True)
    assert gpu.use_gpu and gpu_faiss
    for search in ("search", "exact_search"):
        got, want = getattr(gpu, search)(q, 10), getattr(cpu, search)(q, 10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    assert gpu.recall_against_exact(q, 10) == cpu.recall_against_exact(q, 10)
    gpu.save(tmp_path / "ix")
    loaded = NNNIndex.load(tmp_path / "ix", expected_refs=r, use_gpu=True)
    np.testing.assert_array_equal(loaded.search(q, 10)[1], cpu.search(q, 10)[1])
    with pytest.raises(ValueError, match="kind='hnsw' has no GPU version"):
        NNNIndex.build(g, r, k=K, kind="hnsw", use_gpu=True, progress=False)


def test_nnn_index_gpu_limits_are_clear_errors(gpu_faiss):
    rng = np.random.default_rng(4)
    g, r, q = (unit_rows(rng.standard_normal((n, 4))) for n in (2100, 50, 3))
    flat = NNNIndex.build(g, r, k=3, use_gpu=True, progress=False)
    with pytest.raises(ValueError, match="GPU FAISS returns at most 2048 neighbours.*top_k=2049"):
        flat.search(q, 2049)
    assert flat.search(q, 2048)[1].shape == (3, 2048)
    ivf = NNNIndex.build(g, r, k=3, kind="ivf", nlist=2100, nprobe=8, use_gpu=True,
                         progress=False)
    with pytest.raises(ValueError, match="GPU FAISS probes at most 2048 lists.*nprobe=2049"):
        ivf.set_search_params(nprobe=2049)
    assert ivf.params["nprobe"] == 8 and ivf._searcher.nprobe == 8   # left as it was
    # every list (2,100 > 2048) is probed by the CPU copy of the index instead
    np.testing.assert_array_equal(ivf.exact_search(q, 5)[1], flat.search(q, 5)[1])


def test_nnn_index_cli_gpu_flag(tmp_path, gpu_faiss, data):
    from nnn.index_cli import main

    g, r, q = data
    for name, a in (("g", g), ("r", r), ("q", q)):
        np.save(tmp_path / f"{name}.npy", a)
    t = tmp_path
    assert main(["--quiet", "build", "--gallery", str(t / "g.npy"), "--refs", str(t / "r.npy"),
                 "--out", str(t / "ix"), "--k", str(K), "--kind", "ivf", "--nlist", "9",
                 "--gpu"]) == 0
    built = len(gpu_faiss)
    assert built >= 1
    assert main(["--quiet", "query", "--index", str(t / "ix"), "--queries", str(t / "q.npy"),
                 "--top-k", "5", "--out", str(t / "res.npz"), "--gpu", "--recall"]) == 0
    assert len(gpu_faiss) > built                       # the query loaded it onto the "GPU"
    with np.load(t / "res.npz") as res:
        np.testing.assert_array_equal(res["ids"], NNNIndex.load(t / "ix").search(q, 5)[1])
