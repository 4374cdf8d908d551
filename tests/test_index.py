"""Saved indexes: ``ReferenceIndex.save/load``, CSLS over a ``ReferenceIndex``, the folded
``NNNIndex`` (flat equal to ``NNN.search``, IVF/HNSW recall), its chunked build from files, bias
shards and their merge; bad input gives one clear error and overwrites nothing."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from nnn._index_io import FAISS_FILE, array_digest, remove_stale_temps
from nnn.data.rows import open_rows
from nnn.index import NNNIndex, compute_shard, merge_shards, read_shards, shard_range
from nnn.methods import CSLS, NNN, ReferenceIndex
from nnn.methods._topk import gpu_faiss_available
from tests.conftest import unit_rows
from tests.tolerances import assert_topk_ids, dot_atol

D, K, ALPHA = 12, 7, 0.6


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    g, r, q = (unit_rows(rng.standard_normal((n, D))) for n in (1013, 301, 57))
    return g, r, q


def _scale(bias) -> float:
    """|[q, 1]| |[g, -b]| for unit q, g: the bound of a folded score's float32 error."""
    return float(np.sqrt(2) * np.sqrt(1 + np.max(bias) ** 2))


# -- ReferenceIndex ---------------------------------------------------------------------------
@pytest.mark.parametrize("index", ["flat", "ivf", "ivf_fp16"])
def test_reference_index_round_trip(tmp_path, data, index):
    g, r, _ = data
    built = ReferenceIndex(r, index=index, nlist=5)
    built.save(tmp_path / "ri")
    meta = json.loads((tmp_path / "ri" / "meta.json").read_text())
    assert meta["n_refs"] == 301 and meta["dim"] == D and meta["index"] == index
    assert meta["refs_digest"] == array_digest(r) and "faiss" in meta["versions"]
    loaded = ReferenceIndex.load(tmp_path / "ri", expected_refs=r, verify=True)
    assert (loaded.index, loaded.nlist, loaded.n_refs, loaded.dim) == (index, built.nlist, 301, D)
    np.testing.assert_array_equal(loaded.topk(g, K), built.topk(g, K))
    loaded.verify(r)
    with pytest.raises(ValueError, match="other references"):
        loaded.verify(r[::-1])


def test_reference_index_refuses_other_references_and_bad_files(tmp_path, data):
    _, r, _ = data
    path = ReferenceIndex(r, index="flat").save(tmp_path / "ri")
    with pytest.raises(ValueError, match=r"built with other references than expected_refs"):
        ReferenceIndex.load(path, expected_refs=r[:-1])
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        ReferenceIndex(r[:100], index="flat").save(path)
    assert ReferenceIndex.load(path).n_refs == 301  # the refused save left it as it was
    ReferenceIndex(r[:100], index="flat").save(path, overwrite=True)
    assert ReferenceIndex.load(path).n_refs == 100
    with pytest.raises(ValueError, match="is not a saved NNN index .*says kind .reference_index."):
        NNNIndex.load(path)
    faiss_file = path / FAISS_FILE
    data_bytes = faiss_file.read_bytes()
    faiss_file.write_bytes(data_bytes[: len(data_bytes) // 2])
    with pytest.raises(ValueError, match=r"index.faiss' has \d+ bytes, not \d+ \(truncated"):
        ReferenceIndex.load(path)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"][FAISS_FILE]["bytes"] = len(data_bytes) // 2  # a short file the meta agrees with
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"index.faiss' is truncated or corrupt \(FAISS: .*read"):
        ReferenceIndex.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReferenceIndex.load(tmp_path / "nowhere")


def test_reference_index_verify_catches_a_flipped_byte(tmp_path, data):
    _, r, _ = data
    path = ReferenceIndex(r, index="flat").save(tmp_path / "ri")
    raw = bytearray((path / FAISS_FILE).read_bytes())
    raw[-5] ^= 0xFF  # a vector's byte: FAISS still reads it
    (path / FAISS_FILE).write_bytes(bytes(raw))
    ReferenceIndex.load(path)  # the cheap checks pass
    with pytest.raises(ValueError, match="does not match the sha256"):
        ReferenceIndex.load(path, verify=True)


def test_stale_temporary_folders_are_removed(tmp_path, data):
    _, r, _ = data
    dead = tmp_path / f".ri.{socket.gethostname()}-999999999-abcdef12.tmp"
    live = tmp_path / f".ri.{socket.gethostname()}-{os.getpid()}-abcdef12.tmp"
    for folder in (dead, live):
        folder.mkdir()
        (folder / FAISS_FILE).write_bytes(b"half")
    ReferenceIndex(r, index="flat").save(tmp_path / "ri")
    assert not dead.exists() and live.exists()  # a live writer's folder is kept
    assert remove_stale_temps(tmp_path / "ri") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "ri"])


def test_csls_accepts_a_reference_index(tmp_path, data):
    g, r, q = data
    loaded = ReferenceIndex.load(ReferenceIndex(r, index="flat").save(tmp_path / "ri"))
    from_index = CSLS(k=K).fit(g, query_bank=loaded)
    from_array = CSLS(k=K).fit(g, query_bank=r)
    np.testing.assert_allclose(from_index.neighbourhood_, from_array.neighbourhood_,
                               atol=dot_atol(D))
    assert_topk_ids(from_index.search(q, 5)[1], from_array.score(q), atol=4 * dot_atol(D, 2))
    with pytest.raises(ValueError, match="CSLS takes a ReferenceIndex only as query_bank, of the "
                                         "gallery's dimension 8"):
        CSLS(k=K).fit(unit_rows(g[:, :8]), query_bank=loaded)
    # an IVF index: nprobe as for NNN; all lists probed is exact
    ivf = ReferenceIndex(r, index="ivf", nlist=9)
    for nprobe in (1, 9):
        got = CSLS(k=K, nprobe=nprobe).fit(g, query_bank=ivf).neighbourhood_
        nnn = NNN(k=K, alpha=1.0, backend="faiss", nprobe=nprobe).fit(g, query_bank=ivf).bias_
        np.testing.assert_allclose(got, nnn, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, from_array.neighbourhood_, atol=dot_atol(D))
    with pytest.raises(ValueError, match="nprobe"):
        CSLS(k=K, nprobe=0)


# -- NNNIndex -----------------------------------------------------------------------------------
def test_flat_index_equals_nnn_search(tmp_path, data):
    g, r, q = data
    model = NNN(k=K, alpha=ALPHA).fit(g, query_bank=r)
    index = NNNIndex.build(g, r, k=K, alpha=ALPHA, kind="flat", chunk_rows=200, progress=False)
    np.testing.assert_allclose(index.biases, model.bias_, rtol=0, atol=dot_atol(D))
    scores, ids = index.search(q, 10)
    want_scores, _ = model.search(q, 10)
    atol = 2 * dot_atol(D + 1, _scale(model.bias_))
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=atol)
    assert_topk_ids(ids, model.score(q), atol=atol)
    assert index.recall_against_exact(q, 10) == 1.0
    padded = NNNIndex.build(g, r, k=K, alpha=ALPHA, align=16, progress=False)
    assert (index.width, padded.width) == (D + 1, 16)  # zeros pad [g, -b] to 16 floats
    np.testing.assert_allclose(padded.search(q, 10)[0], scores, rtol=0, atol=atol)
    loaded = NNNIndex.load(index.save(tmp_path / "ix"), expected_refs=r, verify=True)
    assert loaded.provenance == index.provenance == {
        "refs_digest": array_digest(r), "n_refs": 301, "k": K, "alpha": ALPHA,
        "normalize": False, "backend": "exact"}
    np.testing.assert_array_equal(loaded.search(q, 10)[1], ids)
    np.testing.assert_array_equal(loaded.biases, index.biases)


@pytest.mark.parametrize("kind, params", [("ivf", {"nlist": 9, "nprobe": 3}),
                                          ("hnsw", {"hnsw_m": 8, "ef_search": 16})])
def test_approximate_kinds_report_recall(tmp_path, data, kind, params):
    g, r, q = data
    model = NNN(k=K, alpha=ALPHA).fit(g, query_bank=r)
    index = NNNIndex.build(g, r, k=K, alpha=ALPHA, kind=kind, progress=False, **params)
    exact_scores, exact_ids = index.exact_search(q, 10)
    atol = 2 * dot_atol(D + 1, _scale(model.bias_))
    assert_topk_ids(exact_ids, model.score(q), atol=atol)  # the exhaustive search is NNN's
    recall = index.recall_against_exact(q, 10)
    assert 0.3 < recall <= 1.0
    loaded = NNNIndex.load(index.save(tmp_path / "ix"))
    assert loaded.params == index.params and loaded.recall_against_exact(q, 10) == recall
    if kind == "ivf":
        loaded.set_search_params(nprobe=9)  # every list: exact
        assert loaded.recall_against_exact(q, 10) == 1.0


def test_build_from_files_in_chunks_equals_the_array_build(tmp_path, data):
    g, r, q = data
    np.save(tmp_path / "g.npy", g)
    save_file({"emb": g.astype(np.float16).astype(np.float32)}, str(tmp_path / "g.safetensors"))
    from_array = NNNIndex.build(g, r, k=K, alpha=ALPHA, progress=False)
    from_npy = NNNIndex.build(tmp_path / "g.npy", r, k=K, alpha=ALPHA, chunk_rows=97,
                              progress=False)
    np.testing.assert_allclose(from_npy.biases, from_array.biases, rtol=0, atol=dot_atol(D))
    assert from_npy.gallery_digest == array_digest(g)
    source = open_rows(tmp_path / "g.safetensors")
    assert source.shape == g.shape
    np.testing.assert_array_equal(source.rows(100, 203), g.astype(np.float16)[100:203])
    rounded = g.astype(np.float16).astype(np.float32)
    from_st = NNNIndex.build(tmp_path / "g.safetensors", r, k=K, alpha=ALPHA, chunk_rows=300,
                             progress=False)
    assert from_st.gallery_digest == array_digest(rounded)
    np.testing.assert_allclose(from_st.biases, NNN(k=K, alpha=ALPHA).fit(
        rounded, query_bank=r).bias_, rtol=0, atol=dot_atol(D))
    with pytest.raises(ValueError, match="has dimension 8 but the references have dimension 12"):
        NNNIndex.build(unit_rows(g[:, :8]), r, k=K, progress=False)
    with pytest.raises(ValueError, match="queries has dimension 11"):
        from_array.search(q[:, :11], 3)


def test_truncated_gallery_file_is_a_one_line_error(tmp_path, data):
    g, _, _ = data
    np.save(tmp_path / "g.npy", g)
    raw = (tmp_path / "g.npy").read_bytes()
    (tmp_path / "g.npy").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=r"gallery file .*g.npy' is truncated or corrupt") as err:
        open_rows(tmp_path / "g.npy")
    assert "\n" not in str(err.value)


def test_index_with_other_references_is_refused(tmp_path, data):
    g, r, _ = data
    path = NNNIndex.build(g, r, k=K, alpha=ALPHA, progress=False).save(tmp_path / "ix")
    with pytest.raises(ValueError, match="built with other references than the references given"):
        NNNIndex.load(path, expected_refs=r[1:])
    before = sorted(p.name for p in path.iterdir()), (path / FAISS_FILE).read_bytes()
    with pytest.raises(FileExistsError):
        NNNIndex.build(g[:500], r, k=K, progress=False).save(path)
    assert (sorted(p.name for p in path.iterdir()), (path / FAISS_FILE).read_bytes()) == before


def test_build_from_a_loaded_reference_index(tmp_path, data):
    g, r, q = data
    refs = ReferenceIndex.load(ReferenceIndex(r, index="flat").save(tmp_path / "ri"))
    index = NNNIndex.build(torch.from_numpy(g), refs, k=K, alpha=ALPHA, progress=False)
    assert index.provenance["backend"] == "faiss" and index.provenance["index"] == "flat"
    index.verify_refs(r)
    index.verify_refs(refs)
    model = NNN(k=K, alpha=ALPHA).fit(g, query_bank=r)
    np.testing.assert_allclose(index.biases, model.bias_, rtol=0, atol=dot_atol(D))


# -- shards ------------------------------------------------------------------------------------
def test_shards_merge_to_the_one_shot_fit(tmp_path, data):
    g, r, q = data
    np.save(tmp_path / "g.npy", g)
    assert [shard_range(1013, i, 3) for i in range(3)] == [(0, 337), (337, 675), (675, 1013)]
    for i in (2, 0, 1):
        compute_shard(tmp_path / "g.npy", r, shard=i, num_shards=3, out=tmp_path / "sh", k=K,
                      alpha=ALPHA, chunk_rows=100, progress=False)
    stale = tmp_path / f".f.npy.{socket.gethostname()}-999999999-0123abcd.tmp"
    stale.write_bytes(b"a killed writer's half file")
    index = merge_shards(tmp_path / "sh", tmp_path / "g.npy", index_out=tmp_path / "ix",
                         biases_out=tmp_path / "b.npy", folded_out=tmp_path / "f.npy",
                         expected_refs=r, progress=False)
    model = NNN(k=K, alpha=ALPHA).fit(g, query_bank=r)
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), model.bias_, rtol=0, atol=dot_atol(D))
    folded, fold_queries = model.fold()
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), folded, rtol=0, atol=dot_atol(D))
    assert not stale.exists()
    loaded = NNNIndex.load(tmp_path / "ix", expected_refs=r)
    assert loaded.gallery_digest == array_digest(g)
    atol = 2 * dot_atol(D + 1, _scale(model.bias_))
    assert_topk_ids(loaded.search(q, 10)[1], model.score(q), atol=atol)
    assert index.n_items == 1013


def test_merge_into_an_ivf_index_and_gpu_without_gpu(tmp_path, data):
    g, r, q = data
    for i in range(2):
        compute_shard(g, r, shard=i, num_shards=2, out=tmp_path / "sh", k=K, progress=False)
    index = merge_shards(tmp_path / "sh", g, index_out=tmp_path / "ix", kind="ivf", nlist=8,
                         nprobe=8, progress=False)
    assert index.recall_against_exact(q, 10) == 1.0  # every list probed: exact
    assert NNNIndex.load(tmp_path / "ix").params == {"nlist": 8, "nprobe": 8}
    if not gpu_faiss_available():
        with pytest.raises(ValueError, match="use_gpu=True but the installed FAISS has no GPU"):
            NNNIndex.load(tmp_path / "ix", use_gpu=True)


def test_merge_refuses_incomplete_or_mixed_shards(tmp_path, data):
    g, r, _ = data
    np.save(tmp_path / "g.npy", g)
    common = dict(num_shards=3, out=tmp_path / "sh", alpha=ALPHA, progress=False)
    compute_shard(tmp_path / "g.npy", r, shard=0, k=K, **common)
    compute_shard(tmp_path / "g.npy", r, shard=2, k=K, **common)
    with pytest.raises(ValueError, match=r"lacks 1 of 3 shards: \[1\]"):
        read_shards(tmp_path / "sh")
    compute_shard(tmp_path / "g.npy", r, shard=1, k=K + 1, **common)
    with pytest.raises(ValueError, match="shard 1 has provenance"):
        read_shards(tmp_path / "sh")
    with pytest.raises(ValueError, match="was made with provenance .* use another out folder"):
        compute_shard(tmp_path / "g.npy", r, shard=1, k=K, **common)
    with pytest.raises(FileExistsError, match="already exists"):  # intact, same settings: kept
        compute_shard(tmp_path / "g.npy", r, shard=1, k=K + 1, **common)
    compute_shard(tmp_path / "g.npy", r, shard=1, k=K, overwrite=True, **common)
    assert len(read_shards(tmp_path / "sh")) == 3
    with pytest.raises(ValueError, match=r"the shards in .* were built with other references"
                                         r".*the references they were built with"):
        merge_shards(tmp_path / "sh", tmp_path / "g.npy", index_out=tmp_path / "ix",
                     expected_refs=r[::-1], progress=False)
    changed = g.copy()
    changed[500] = changed[501]
    np.save(tmp_path / "g2.npy", changed)
    with pytest.raises(ValueError, match=r"rows \[337, 675\) .* differ from those shard 1"):
        merge_shards(tmp_path / "sh", tmp_path / "g2.npy", index_out=tmp_path / "ix",
                     progress=False)
    assert not (tmp_path / "ix").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_non_finite_biases_are_refused(data):
    g, r, _ = data
    biases = NNN(k=K, alpha=ALPHA).fit(g, query_bank=r).bias_.copy()
    for bad in (np.nan, np.inf):
        broken = biases.copy()
        broken[[3, 700]] = bad
        with pytest.raises(ValueError, match=r"2 biases are NaN or infinite \(items \[3, 700\]\)"):
            NNNIndex.from_biases(g, broken, {"k": K}, progress=False)
    with pytest.raises(ValueError, match="biases have shape"):
        NNNIndex.from_biases(g, biases[:-1], {"k": K}, progress=False)
