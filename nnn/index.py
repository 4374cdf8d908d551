"""A saved NNN index: the folded gallery [g, -b(g)] in a FAISS inner-product index.

NNN ranks gallery item r for query q by s(q, r) - b(r); with ``[q, 1] . [r, -b(r)]`` that is a
plain inner product (``NNN.fold``), so any inner-product index serves NNN at the cost of one
more dimension. ``NNNIndex`` holds such an index and remembers how its biases were made
(``provenance``: the references' digest and count, k, alpha, the top-k backend):

- ``NNNIndex.build(gallery, refs, k=, alpha=, kind=)`` computes the biases chunk by chunk
  (``chunk_rows`` gallery rows at a time, each through ``NNN.fit``: the exact torch top-k, or
  the FAISS search of a ``ReferenceIndex`` passed as ``refs``) and adds each folded chunk to
  the FAISS index, so the gallery itself (an array, a memory-mapped file, ``nnn.data.rows``) is
  never in RAM as a whole; ``NNNIndex.from_biases`` does the same from biases computed
  elsewhere (the shards of ``compute_shard``, merged by ``merge_shards``).
- kinds: "flat" (``IndexFlatIP``, exact: the same ids and scores as ``NNN.search`` up to
  float32 rounding), "ivf" (``IndexIVFFlat``, ``nlist`` lists, ``nprobe`` searched) and "hnsw"
  (``IndexHNSWFlat``, ``hnsw_m`` links, ``ef_search``), both approximate;
  ``recall_against_exact(queries, top_k)`` measures them against the exhaustive search of the
  same vectors. ``use_gpu``: flat and IVF indexes are searched on GPU FAISS (HNSW has no GPU
  version in FAISS).
- ``save(path)`` / ``NNNIndex.load(path, expected_refs=)``: one folder written atomically
  (``nnn._index_io``): ``index.faiss``, ``biases.npy`` (n,) float32 and ``meta.json``.

Memory: every kind stores the folded vectors in RAM, (n, width) float32 with width = d + 1
(``folded_width``; optionally padded): 2.05 GB for 1M x 512;
what need not fit is the gallery file and the bias computation. A gallery too large for the
index in RAM still gets its biases (shards, ``merge_shards(index_out=None, biases_out=...)``)
and its folded vectors as a memory-mapped ``.npy`` (``folded_out``) for an engine that reads
from disk; README "Serving NNN" says why FAISS's on-disk inverted lists are not used here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nnn._arrays import as_matrix, check_non_negative, check_positive_int
from nnn._atomic import atomic_save_npy, atomic_write_json
from nnn._index_io import (DEFAULT_ALIGN, DEFAULT_CHUNK_ROWS, DEFAULT_EF_CONSTRUCTION,
                           DEFAULT_EF_SEARCH, DEFAULT_HNSW_M, DEFAULT_NPROBE, FAISS_FILE, KINDS,
                           RowsDigest, array_digest, check_digest, file_digest,
                           library_versions, publish_dir, read_faiss, read_meta,
                           refuse_existing, remove_stale_temps, temp_name, verify_files,
                           write_meta)
from nnn.data.rows import RowSource, as_rows
from nnn.methods import NNN, ReferenceIndex
from nnn.methods.nnn import fold, fold_queries
from nnn.methods._topk import (_NO_GPU_FAISS, GPU_FAISS_MAX_K, IVF_TRAIN_POINTS_PER_LIST,
                               check_gpu_search, default_nlist, faiss_to_gpu,
                               gpu_faiss_available, import_faiss)

log = logging.getLogger(__name__)

#: meta.json kinds of a saved index and of a bias shard
INDEX_KIND, SHARD_KIND = "nnn_index", "nnn_bias_shard"
#: the layout of a shard record; ``read_shards`` refuses others, ``compute_shard`` redoes them
SHARD_FORMAT = 1
BIASES_FILE = "biases.npy"
#: the way past GPU FAISS's limits on top_k and nprobe
_CPU_SEARCH = "use_gpu=False (CPU FAISS)"
_REBUILD = "rebuild it (NNNIndex.build(...).save(path), CLI: nnn-index build or merge)"


# -- biases --------------------------------------------------------------------------------------
class BiasMaker:
    """NNN's biases b(r) = alpha * mean of r's k largest similarities to ``refs``, for any block
    of gallery rows: ``maker(rows (b, d))`` -> (checked rows (b, d), biases (b,) float32).

    ``refs``: an (n_r, d) array (top-k by ``backend``, "exact" or "faiss", with ``nnn_options``
    as for ``NNN``) or a prebuilt ``ReferenceIndex`` (its own FAISS search). Each block goes
    through ``NNN.fit``, so a block's biases are those of a one-shot fit of the whole gallery.
    ``provenance`` records what determines them (it is saved with every index and shard).
    """

    def __init__(self, refs, *, k: int = 16, alpha: float = 0.75, backend: str = "exact",
                 normalize: bool = False, **nnn_options):
        self.k = check_positive_int(k, "k")
        self.alpha = check_non_negative(alpha, "alpha")
        self.normalize = normalize
        if isinstance(refs, ReferenceIndex):
            backend = "faiss"
            self.refs, digest, n_refs = refs, refs.digest, refs.n_refs
            how = {"backend": "faiss", "index": refs.index, "nlist": refs.nlist,
                   "nprobe": nnn_options.get("nprobe")}
        else:
            self.refs = as_matrix(refs, "refs", normalize=normalize)
            digest, n_refs = array_digest(self.refs), len(self.refs)
            how = {"backend": backend, **{key: nnn_options[key] for key in
                                          ("index", "nlist", "nprobe") if key in nnn_options}}
        if self.k > n_refs:
            raise ValueError(f"k={self.k} is larger than the number of references ({n_refs}); "
                             f"use k <= {n_refs} or more references")
        self.dim = self.refs.dim if isinstance(self.refs, ReferenceIndex) else self.refs.shape[1]
        self._options = dict(backend=backend, normalize=normalize, progress=False, **nnn_options)
        NNN(k=self.k, alpha=self.alpha, **self._options)  # bad options fail here, not per block
        self.provenance = {"refs_digest": digest, "n_refs": int(n_refs), "k": self.k,
                           "alpha": self.alpha, "normalize": bool(normalize), **how}

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model = NNN(k=self.k, alpha=self.alpha, **self._options).fit(rows, query_bank=self.refs)
        return model.gallery_, model.bias_


def _checked_biases(biases, n: int, gallery: str) -> np.ndarray:
    """``biases`` as (n,) float32, one finite bias per row of ``gallery`` (its name)."""
    biases = np.asarray(biases, dtype=np.float32)
    if biases.shape != (n,):
        raise ValueError(f"biases have shape {biases.shape} but {gallery} has {n} rows; they "
                         "must hold one bias per gallery item")
    bad = np.flatnonzero(~np.isfinite(biases))
    if len(bad):
        raise ValueError(f"{len(bad)} biases are NaN or infinite (items {bad[:5].tolist()}); "
                         "recompute them from finite embeddings")
    return biases


def _check_gallery_dim(source: RowSource, dim: int) -> None:
    if source.shape[1] != dim:
        raise ValueError(f"{source._name} has dimension {source.shape[1]} but the references "
                         f"have dimension {dim}; all embeddings must come from the same model")


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, disable=not progress,
                dynamic_ncols=True)


def folded_width(d: int, align: int = DEFAULT_ALIGN) -> int:
    """The folded vectors' length: d + 1 rounded up to a multiple of ``align`` floats (zeros on
    both sides, so scores do not change). The default, 1, is exactly d + 1: at 1M x 512 a flat
    index of 513-float rows scanned as fast as FAISS over the 512-float gallery (within the
    noise; benchmarks/RESULTS.md, "Saved NNN index"), so padding (16: 64-byte rows, 528 floats,
    3 % more memory) is only an option to try on other CPUs.
    """
    align = check_positive_int(align, "align")
    return -(-(d + 1) // align) * align


# -- the index ----------------------------------------------------------------------------------
def _new_faiss_index(kind: str, dim: int, *, nlist: int, hnsw_m: int, ef_construction: int):
    faiss = import_faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        idx = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
        return idx
    idx = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = ef_construction
    return idx


def _check_kind(kind: str, use_gpu: bool) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if use_gpu and not gpu_faiss_available():
        raise ValueError(_NO_GPU_FAISS.replace("use_gpu_faiss=True", "use_gpu=True"))
    if use_gpu and kind == "hnsw":
        raise ValueError("kind='hnsw' has no GPU version in FAISS; use kind='flat' or 'ivf' on "
                         "the GPU, or use_gpu=False")


class NNNIndex:
    """NNN's folded gallery in a FAISS inner-product index (module doc).

    Attributes: ``kind``, ``dim`` (the embeddings' d), ``width`` (the FAISS index's: d + 1,
    or rounded up to a multiple of ``align``, ``folded_width``), ``n_items``,
    ``provenance`` (dict: ``refs_digest``, ``n_refs``, ``k``, ``alpha``, ``normalize``,
    ``backend`` ...), ``biases`` (n,) float32, ``gallery_digest``, ``params`` (nlist, nprobe,
    hnsw_m, ef_search where they apply), ``faiss_index`` (the CPU index), ``use_gpu``.
    """

    def __init__(self, faiss_index, *, kind: str, dim: int, biases: np.ndarray,
                 provenance: dict, gallery_digest: str, params: dict, use_gpu: bool = False):
        _check_kind(kind, use_gpu)
        self.faiss_index, self.kind, self.dim, self.width = faiss_index, kind, dim, faiss_index.d
        self.n_items = int(faiss_index.ntotal)
        self.biases, self.provenance, self.gallery_digest = biases, dict(provenance), gallery_digest
        self.params, self.use_gpu = dict(params), use_gpu
        self._searcher = faiss_to_gpu(faiss_index) if use_gpu else faiss_index
        self._apply_params()

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        p = self.provenance
        return (f"NNNIndex(kind={self.kind!r}, n_items={self.n_items}, dim={self.dim}, "
                f"k={p['k']}, alpha={p['alpha']}, n_refs={p['n_refs']}, params={self.params}, "
                f"use_gpu={self.use_gpu})")

    def _apply_params(self, params: dict | None = None) -> None:
        """Set the searcher to ``params`` (default: the current ones), which become the index's
        only once GPU FAISS's limits are checked."""
        params = self.params if params is None else params
        if self.kind == "ivf":
            nprobe = min(params["nprobe"], params["nlist"])
            check_gpu_search(self.use_gpu, 1, nprobe, remedy=_CPU_SEARCH)
            self._searcher.nprobe = nprobe
        elif self.kind == "hnsw":
            self._searcher.hnsw.efSearch = params["ef_search"]
        self.params = params

    def set_search_params(self, *, nprobe: int | None = None,
                          ef_search: int | None = None) -> None:
        """IVF lists probed per query / HNSW search beam (None keeps the current value; a
        value refused leaves the index as it was)."""
        params = dict(self.params)
        if nprobe is not None:
            params["nprobe"] = check_positive_int(nprobe, "nprobe")
        if ef_search is not None:
            params["ef_search"] = check_positive_int(ef_search, "ef_search")
        self._apply_params(params)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, gallery, refs, *, k: int = 16, alpha: float = 0.75, kind: str = "flat",
              backend: str = "exact", normalize: bool = False,
              chunk_rows: int = DEFAULT_CHUNK_ROWS, nlist: int | None = None,
              nprobe: int = DEFAULT_NPROBE, hnsw_m: int = DEFAULT_HNSW_M,
              ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef_search: int = DEFAULT_EF_SEARCH,
              align: int = DEFAULT_ALIGN, use_gpu: bool = False, progress: bool = True,
              ref_options: dict | None = None) -> "NNNIndex":
        """Biases and index in one pass over ``gallery`` (an (n, d) array, a ``.npy`` /
        ``.safetensors`` path read memory-mapped, or a ``RowSource``), ``chunk_rows`` rows at
        a time. ``refs``, ``k``, ``alpha``, ``backend``, ``normalize``: ``BiasMaker``;
        ``ref_options``: its top-k options over the references (e.g. ``{"index": "ivf",
        "nprobe": 8}`` with ``backend="faiss"``), kept apart from this index's own ``nlist``,
        ``nprobe``, ... . IVF trains its ``nlist`` lists (None: about 4 sqrt(n)) on evenly spaced
        blocks of the gallery first (their biases are computed twice). ``align``: the folded
        rows' padding (``folded_width``)."""
        maker = BiasMaker(refs, k=k, alpha=alpha, backend=backend, normalize=normalize,
                          **(ref_options or {}))
        source = as_rows(gallery)
        _check_gallery_dim(source, maker.dim)
        n = len(source)
        parts = [(0, n, None, None)]
        return cls._assemble(source, parts, maker.provenance, maker, kind=kind,
                             chunk_rows=chunk_rows, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                             ef_construction=ef_construction, ef_search=ef_search,
                             align=align, use_gpu=use_gpu, progress=progress)

    @classmethod
    def from_biases(cls, gallery, biases, provenance: dict, *, parts=None, kind: str = "flat",
                    chunk_rows: int = DEFAULT_CHUNK_ROWS, nlist: int | None = None,
                    nprobe: int = DEFAULT_NPROBE, hnsw_m: int = DEFAULT_HNSW_M,
                    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
                    ef_search: int = DEFAULT_EF_SEARCH, align: int = DEFAULT_ALIGN,
                    use_gpu: bool = False, progress: bool = True) -> "NNNIndex":
        """The index of ``gallery`` (as in ``build``) with biases (n,) made elsewhere as
        ``provenance`` says. ``parts``: [(start, stop, gallery_digest or None, name)] row
        ranges whose gallery rows must hash to the given digest (the shards' check that the
        gallery did not change)."""
        source = as_rows(gallery)
        biases = _checked_biases(biases, len(source), source._name)
        return cls._assemble(source, parts or [(0, len(source), None, None)], provenance,
                             biases, kind=kind, chunk_rows=chunk_rows, nlist=nlist,
                             nprobe=nprobe, hnsw_m=hnsw_m, ef_construction=ef_construction,
                             ef_search=ef_search, align=align, use_gpu=use_gpu,
                             progress=progress)

    @classmethod
    def _assemble(cls, source: RowSource, parts, provenance, biases, *, kind, chunk_rows, nlist,
                  nprobe, hnsw_m, ef_construction, ef_search, align, use_gpu,
                  progress) -> "NNNIndex":
        """One pass over ``parts`` of ``source``; ``biases``: an (n,) array or a ``BiasMaker``."""
        _check_kind(kind, use_gpu)
        chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
        n, d = source.shape
        params = {}
        if kind == "ivf":
            nlist = default_nlist(n) if nlist is None else min(check_positive_int(nlist, "nlist"), n)
            params = {"nlist": nlist, "nprobe": check_positive_int(nprobe, "nprobe")}
        elif kind == "hnsw":
            params = {"hnsw_m": check_positive_int(hnsw_m, "hnsw_m"),
                      "ef_construction": check_positive_int(ef_construction, "ef_construction"),
                      "ef_search": check_positive_int(ef_search, "ef_search")}
        width = folded_width(d, align)
        idx = _new_faiss_index(kind, width, nlist=params.get("nlist", 1), hnsw_m=hnsw_m,
                               ef_construction=ef_construction)
        if kind == "ivf":
            idx.train(_training_sample(source, biases, nlist, width))
        blocks = FoldedBlocks(source, parts, biases, chunk_rows, width)
        with _bar(n, "NNN index", progress) as bar:
            for _, block in blocks:
                idx.add(block)
                bar.update(len(block))
        return cls(idx, kind=kind, dim=d, biases=blocks.biases, provenance=provenance,
                   gallery_digest=blocks.digest, params=params, use_gpu=use_gpu)

    # -- searching -----------------------------------------------------------------------------
    def _folded(self, queries) -> np.ndarray:
        q = as_matrix(queries, "queries", dim=self.dim,
                      normalize=self.provenance.get("normalize", False))
        return fold_queries(q, self.width)

    def search(self, queries, top_k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query, as ``NNN.search``: scores (n_q, top_k) float32 descending (s(q, r)
        - b(r)) and gallery ids (n_q, top_k) int64. Exact for "flat"; an approximate kind may
        return fewer than ``top_k`` hits for a query, padded with id -1 and score -inf."""
        top_k = check_positive_int(top_k, "top_k", upper=self.n_items,
                                   upper_name="the gallery size")
        check_gpu_search(self.use_gpu, top_k, k_name="top_k", remedy=_CPU_SEARCH)
        scores, ids = self._searcher.search(self._folded(queries), top_k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def exact_search(self, queries, top_k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The exhaustive search of the same folded vectors: every IVF list, or HNSW's flat
        storage (on the CPU for HNSW, and for IVF with more lists than GPU FAISS probes)."""
        top_k = check_positive_int(top_k, "top_k", upper=self.n_items,
                                   upper_name="the gallery size")
        check_gpu_search(self.use_gpu, top_k, k_name="top_k", remedy=_CPU_SEARCH)
        q = self._folded(queries)
        if self.kind == "flat":
            return self._searcher.search(q, top_k)
        if self.kind == "hnsw":
            return import_faiss().downcast_index(self.faiss_index.storage).search(q, top_k)
        nlist, nprobe = self.params["nlist"], min(self.params["nprobe"], self.params["nlist"])
        searcher = self.faiss_index if nlist > GPU_FAISS_MAX_K else self._searcher
        searcher.nprobe = nlist
        try:
            return searcher.search(q, top_k)
        finally:
            searcher.nprobe = nprobe

    def recall_against_exact(self, queries, top_k: int = 10) -> float:
        """Recall@top_k of ``search`` against ``exact_search``: the mean fraction of each query's
        exact top-k ids that the search returns (1.0 for "flat")."""
        _, got = self.search(queries, top_k)
        _, want = self.exact_search(queries, top_k)
        hits = [len(np.intersect1d(a[a >= 0], b)) for a, b in zip(got, want)]
        return float(np.mean(hits) / top_k)

    # -- provenance ----------------------------------------------------------------------------
    def verify_refs(self, refs, *, normalize: bool | None = None) -> None:
        """``ValueError`` unless the biases were made from exactly ``refs`` (an array, or a
        ``ReferenceIndex``)."""
        if isinstance(refs, ReferenceIndex):
            got = refs.digest
        else:
            norm = self.provenance.get("normalize", False) if normalize is None else normalize
            got = array_digest(as_matrix(refs, "refs", normalize=norm))
        check_digest(self.provenance["refs_digest"], got, "this NNNIndex", "the references given")

    # -- saving and loading --------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> Path:
        """The folder ``path``, atomically (``nnn._index_io``): ``index.faiss``, ``biases.npy``
        and ``meta.json``. An existing ``path`` is replaced only with ``overwrite``, once the new
        index is complete. Returns the path."""
        faiss = import_faiss()
        with publish_dir(path, kind=INDEX_KIND, overwrite=overwrite, what="NNN index") as tmp:
            faiss.write_index(self.faiss_index, str(tmp / FAISS_FILE))
            np.save(tmp / BIASES_FILE, self.biases, allow_pickle=False)
            write_meta(tmp, {"kind": INDEX_KIND, "index": self.kind, "dim": self.dim,
                             "width": self.width,
                             "n_items": self.n_items, "provenance": self.provenance,
                             "gallery_digest": self.gallery_digest, "params": self.params,
                             "versions": library_versions()})
        return Path(path)

    @classmethod
    def load(cls, path, *, expected_refs=None, verify: bool = False,
             use_gpu: bool = False) -> "NNNIndex":
        """An index saved by ``save``, checked: ``meta.json``, file sizes, FAISS can read
        ``index.faiss`` and it holds ``n_items`` vectors of ``dim + 1`` of the recorded kind.
        ``verify``: re-hash every file. ``expected_refs`` (an array or ``ReferenceIndex``):
        ``ValueError`` unless the biases were made from exactly these references."""
        path = Path(path)
        meta = read_meta(path, INDEX_KIND, "NNN index", _REBUILD)
        if verify:
            verify_files(path, meta, "NNN index", _REBUILD)
        idx = read_faiss(path / FAISS_FILE, "NNN index", _REBUILD)
        want = {"flat": "IndexFlatIP", "ivf": "IndexIVFFlat", "hnsw": "IndexHNSWFlat"}
        kind, dim, n = meta.get("index"), meta.get("dim"), meta.get("n_items")
        width = meta.get("width")
        if type(idx).__name__ != want.get(kind) or idx.d != width or idx.ntotal != n \
                or not isinstance(dim, int) or width < dim + 1:
            raise ValueError(f"NNN index {str(path)!r}: {FAISS_FILE} holds a "
                             f"{type(idx).__name__} of {idx.ntotal} x {idx.d} but meta.json says "
                             f"{kind!r} of {n} x {width} (d = {dim}; files from different "
                             f"indexes); {_REBUILD}")
        biases = np.load(path / BIASES_FILE, allow_pickle=False)
        if biases.shape != (n,) or biases.dtype != np.float32:
            raise ValueError(f"NNN index {str(path / BIASES_FILE)!r} holds {biases.shape} "
                             f"{biases.dtype}, not ({n},) float32; {_REBUILD}")
        self = cls(idx, kind=kind, dim=dim, biases=biases, provenance=meta["provenance"],
                   gallery_digest=meta["gallery_digest"], params=meta["params"], use_gpu=use_gpu)
        if expected_refs is not None:
            try:
                self.verify_refs(expected_refs)
            except ValueError as err:
                raise ValueError(f"NNN index {str(path)!r}: {err}") from None
        return self


def _training_sample(source: RowSource, maker, nlist: int, width: int, *,
                     blocks: int = 32) -> np.ndarray:
    """Folded rows to train IVF lists on: ``blocks`` evenly spaced blocks of the gallery, about
    ``IVF_TRAIN_POINTS_PER_LIST * nlist`` rows in all (every row when the gallery is smaller)."""
    n = len(source)
    want = min(n, max(nlist * IVF_TRAIN_POINTS_PER_LIST, 39 * nlist))
    per = math.ceil(want / blocks)
    starts = np.unique(np.linspace(0, n - per, blocks).astype(int)) if n > want else [0]
    sample = []
    for s in starts:
        stop = min(n, s + (per if n > want else n))
        rows = source.rows(s, stop)
        if isinstance(maker, BiasMaker):
            rows, b = maker(rows)
        else:
            b = maker[s:stop]
        sample.append(fold(rows, b, width))
    return np.concatenate(sample)


class FoldedBlocks:
    """Iterate ``(first_row, [rows, -b] block)`` over ``parts`` of ``source``, ``chunk_rows`` rows
    at a time; ``biases``: an (n,) array or a ``BiasMaker`` (then ``self.biases`` fills in).

    ``parts``: [(start, stop, digest or None, name)]; a part whose rows do not hash to its
    digest raises ``ValueError`` once read. After a full pass ``digest`` is the whole gallery's
    ``array_digest`` (parts must cover it in order).
    """

    def __init__(self, source: RowSource, parts, biases, chunk_rows: int,
                 width: int | None = None):
        self.source, self.parts, self.chunk_rows, self.width = source, parts, chunk_rows, width
        self._maker = biases if isinstance(biases, BiasMaker) else None
        self.biases = np.empty(len(source), dtype=np.float32) if self._maker else biases
        self.digest = None

    def __iter__(self):
        n, d = self.source.shape
        whole = RowsDigest(n, d)
        for start, stop, want, name in self.parts:
            part = RowsDigest(stop - start, d)
            for s, rows in self.source.chunks(start, stop, self.chunk_rows):
                part.update(rows)
                whole.update(rows)
                if self._maker is not None:
                    rows, self.biases[s:s + len(rows)] = self._maker(rows)
                yield s, fold(rows, self.biases[s:s + len(rows)], self.width)
            if want is not None and part.hexdigest() != want:
                raise ValueError(f"rows [{start}, {stop}) of {self.source._name} differ from "
                                 f"those {name} was computed from (the gallery changed); "
                                 "recompute that shard, or pass the gallery it was made from")
        self.digest = whole.hexdigest()


def write_folded(path, source: RowSource, biases, *, parts=None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """[g, -b] (n, d + 1) float32 as a ``.npy`` file written through a memory map, chunk by
    chunk (neither the gallery nor the result is held in RAM), under a temporary name renamed
    onto ``path`` when complete (a killed writer's temporary file is removed by the next). For
    a gallery whose index does not fit in RAM: any engine that searches inner products from
    disk serves NNN from it with queries [q, 1]."""
    path = Path(path)
    if source.path is not None and path.exists() and path.resolve() == source.path.resolve():
        raise ValueError(f"the folded gallery file {str(path)!r} is the gallery it is folded "
                         "from; write it to another path")
    refuse_existing(path, overwrite, "folded gallery file")
    n, d = source.shape
    remove_stale_temps(path)
    tmp = temp_name(path)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d + 1))
    try:
        with _bar(n, "folded gallery", progress) as bar:
            for s, block in FoldedBlocks(source, parts or [(0, n, None, None)], biases,
                                         check_positive_int(chunk_rows, "chunk_rows")):
                out[s:s + len(block)] = block
                bar.update(len(block))
        out.flush()
        del out
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# -- shards --------------------------------------------------------------------------------------
def shard_range(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Rows [shard * n // num_shards, (shard + 1) * n // num_shards) of an n-row gallery."""
    num_shards = check_positive_int(num_shards, "num_shards")
    if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) \
            or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be an integer in [0, {num_shards}), got {shard!r}")
    if num_shards > n:
        raise ValueError(f"num_shards={num_shards} is larger than the gallery ({n} rows); use "
                         f"num_shards <= {n}")
    return shard * n // num_shards, (shard + 1) * n // num_shards


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def compute_shard(gallery, refs, *, shard: int, num_shards: int, out, k: int = 16,
                  alpha: float = 0.75, backend: str = "exact", normalize: bool = False,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False,
                  progress: bool = True, **nnn_options) -> Path:
    """The biases of one shard of ``gallery`` (``shard_range``), into the folder ``out``:
    ``shard-IIIII-of-NNNNN.npy`` ((rows,) float32) and then ``.json`` (row range, gallery shape
    and the digest of its rows, ``BiasMaker.provenance``, the .npy file's digest), each written
    atomically; the .json marks the shard complete. Without ``overwrite``, an existing shard
    that is intact and was made the same way (gallery shape, references, k, alpha, backend) is
    kept (``FileExistsError``, so a rerun resumes), one whose files are damaged is recomputed,
    and one made another way is refused (``ValueError``). Returns the .json path."""
    source = as_rows(gallery)
    start, stop = shard_range(len(source), shard, num_shards)
    maker = BiasMaker(refs, k=k, alpha=alpha, backend=backend, normalize=normalize,
                      **nnn_options)
    _check_gallery_dim(source, maker.dim)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = shard_name(shard, num_shards)
    meta_path = out / f"{stem}.json"
    if not overwrite and _shard_is_kept(meta_path, source, maker, shard, num_shards):
        raise FileExistsError(f"shard {str(meta_path)!r} already exists; pass overwrite=True "
                              "(CLI: --overwrite) to recompute it, or use another out folder")
    t0 = time.perf_counter()
    biases = np.empty(stop - start, dtype=np.float32)
    digest = RowsDigest(stop - start, source.shape[1])
    with _bar(stop - start, f"biases {stem}", progress) as bar:
        for s, rows in source.chunks(start, stop, check_positive_int(chunk_rows, "chunk_rows")):
            digest.update(rows)
            biases[s - start:s - start + len(rows)] = maker(rows)[1]
            bar.update(len(rows))
    npy = atomic_save_npy(out / f"{stem}.npy", biases)
    atomic_write_json(meta_path, {
        "format": SHARD_FORMAT, "kind": SHARD_KIND, "shard": int(shard),
        "num_shards": int(num_shards), "start": start, "stop": stop, "gallery": str(source.path or source.what),
        "gallery_shape": list(source.shape), "gallery_digest": digest.hexdigest(),
        "provenance": maker.provenance, "biases_sha256": file_digest(npy),
        "seconds": round(time.perf_counter() - t0, 3), "versions": library_versions()})
    return meta_path


def _is_shard_record(meta, shard: int, num_shards: int, n: int) -> bool:
    """Whether ``meta`` (a parsed shard .json) is a record of this format for ``shard`` of
    ``num_shards`` of an n-row gallery (what ``read_shards`` accepts of it)."""
    return (isinstance(meta, dict) and meta.get("kind") == SHARD_KIND
            and meta.get("format") == SHARD_FORMAT and meta.get("shard") == shard
            and meta.get("num_shards") == num_shards
            and (meta.get("start"), meta.get("stop")) == shard_range(n, shard, num_shards))


def _shard_is_kept(meta_path: Path, source: RowSource, maker: BiasMaker, shard: int,
                   num_shards: int) -> bool:
    """Whether the shard record ``meta_path`` is complete and intact (its .npy matches the
    recorded digest) for this gallery shape and ``maker``. False when there is none or its
    files are damaged (recompute it); ``ValueError`` when it was made another way."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False  # none yet, or a damaged record: (re)compute
    npy = meta_path.with_suffix(".npy")
    if not _is_shard_record(meta, shard, num_shards, len(source)) or not npy.is_file() \
            or file_digest(npy) != meta.get("biases_sha256"):
        log.warning("shard %s is incomplete, damaged or of another format; recomputing it",
                    str(meta_path))
        return False
    want = {"gallery_shape": list(source.shape),
            "provenance": json.loads(json.dumps(maker.provenance))}
    for key, value in want.items():
        if meta.get(key) != value:
            raise ValueError(f"shard {str(meta_path)!r} was made with {key} {meta.get(key)}, "
                             f"not {value}; use another out folder for these settings, or pass "
                             "overwrite=True (CLI: --overwrite) to recompute it")
    return True


def read_shards(folder, *, num_shards: int | None = None) -> list[dict]:
    """The shard records in ``folder``, checked to form one complete set: every shard of the
    same split present, their .npy files intact, the same gallery shape and provenance
    (references, k, alpha, backend). ``ValueError`` naming what is missing or differs."""
    folder = Path(folder)
    metas = []
    for f in sorted(folder.glob("shard-*-of-*.json")):
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"shard record {str(f)!r} is truncated or corrupt ({err}); "
                             "recompute that shard with --overwrite") from None
        if isinstance(meta, dict) and meta.get("kind") == SHARD_KIND:
            if meta.get("format") != SHARD_FORMAT:
                raise ValueError(f"shard record {str(f)!r} has format {meta.get('format')!r}; "
                                 f"this version reads format {SHARD_FORMAT}: recompute that "
                                 "shard with --overwrite")
            metas.append(meta | {"_path": f})
    if not metas:
        raise FileNotFoundError(f"no bias shards (shard-*-of-*.json) in {str(folder)!r}; run "
                                "nnn-index shard or shards with --out pointing there first")
    counts = sorted({m["num_shards"] for m in metas})
    if len(counts) > 1 or (num_shards is not None and counts != [num_shards]):
        raise ValueError(f"{str(folder)!r} holds shards of splits into {counts} parts"
                         + (f" (expected {num_shards})" if num_shards else "")
                         + "; keep one split per folder")
    n = counts[0]
    have = {m["shard"]: m for m in metas}
    missing = [i for i in range(n) if i not in have]
    if missing:
        raise ValueError(f"{str(folder)!r} lacks {len(missing)} of {n} shards: "
                         f"{missing[:20]}; run those (nnn-index shard --shard I) or see the "
                         "failed jobs' logs")
    first = have[0]
    for i in range(n):
        m = have[i]
        if (m["start"], m["stop"]) != shard_range(first["gallery_shape"][0], i, n):
            raise ValueError(f"shard {i} covers rows [{m['start']}, {m['stop']}), not those of "
                             f"shard {i} of {n}; recompute it with --overwrite")
        for key in ("gallery_shape", "provenance"):
            if m[key] != first[key]:
                raise ValueError(f"shard {i} has {key} {m[key]} but shard 0 has {first[key]}; "
                                 "all shards must come from the same gallery, references, k, "
                                 "alpha and backend: recompute the odd ones")
        npy = folder / f"{shard_name(i, n)}.npy"
        if not npy.is_file() or file_digest(npy) != m["biases_sha256"]:
            raise ValueError(f"shard file {str(npy)!r} is missing or does not match its record "
                             "(truncated or replaced); recompute that shard with --overwrite")
    return [have[i] for i in range(n)]


def _check_merge_targets(folder: Path, inputs, overwrite: bool, targets) -> None:
    """Before any work: each of ``targets`` ((path or None, what, kind)) is neither an input
    (the shards ``folder`` or anything in it, a path of ``inputs``) nor another target, and
    ``refuse_existing`` lets it be written."""
    folder = folder.resolve()
    taken = {Path(p).resolve() for p in inputs if p is not None}
    for target, what, kind in targets:
        if target is None:
            continue
        path = Path(target).resolve()
        if path in taken or path == folder or folder in path.parents:
            raise ValueError(f"the {what} {str(target)!r} is one of merge's inputs or outputs "
                             "(the shards folder or a file in it, the gallery, the references, "
                             "another output); write it to another path")
        refuse_existing(Path(target), overwrite, what, kind)
        taken.add(path)


def merge_shards(folder, gallery, *, index_out=None, biases_out=None, folded_out=None,
                 overwrite: bool = False, expected_refs=None, inputs=(), **index_options):
    """Assemble the biases of a complete shard set (``read_shards``) and, with ``index_out``,
    build and save the ``NNNIndex`` (``index_options``: ``NNNIndex.from_biases``); every
    shard's gallery rows are re-hashed on the way and must match. ``biases_out``: also save the
    (n,) biases as ``.npy``; ``folded_out``: [g, -b] as a memory-mapped ``.npy`` (both atomic).
    ``expected_refs``: refuse shards made from other references. No output may be an input
    (the gallery, the shards folder or a file in it, or one of ``inputs``, e.g. the
    references' file) or another output. Returns the index (or None without ``index_out``)."""
    shards = read_shards(folder)
    provenance = shards[0]["provenance"]
    source = as_rows(gallery)
    if list(source.shape) != shards[0]["gallery_shape"]:
        raise ValueError(f"{source._name} has shape {source.shape} but the shards were computed "
                         f"for a gallery of shape {tuple(shards[0]['gallery_shape'])}; pass "
                         "that gallery")
    if expected_refs is not None:
        got = expected_refs.digest if isinstance(expected_refs, ReferenceIndex) else \
            array_digest(as_matrix(expected_refs, "refs", normalize=provenance["normalize"]))
        check_digest(provenance["refs_digest"], got, f"the shards in {str(folder)!r}",
                     "the references given", plural=True)
    _check_merge_targets(Path(folder), [source.path, *inputs], overwrite,
                         ((index_out, "NNN index", INDEX_KIND), (biases_out, "biases file", None),
                          (folded_out, "folded gallery file", None)))
    biases = np.concatenate([np.load(Path(folder) / f"{shard_name(m['shard'], len(shards))}.npy",
                                     allow_pickle=False) for m in shards])
    parts = [(m["start"], m["stop"], m["gallery_digest"], f"shard {m['shard']}") for m in shards]
    if folded_out is not None:
        write_folded(folded_out, source, biases, parts=parts, overwrite=overwrite,
                     chunk_rows=index_options.get("chunk_rows", DEFAULT_CHUNK_ROWS),
                     progress=index_options.get("progress", True))
    result = None
    if index_out is not None:
        result = NNNIndex.from_biases(source, biases, provenance, parts=parts, **index_options)
        result.save(index_out, overwrite=overwrite)
    if biases_out is not None:
        atomic_save_npy(biases_out, biases)
    return result


__all__ = ["NNNIndex", "BiasMaker", "KINDS", "compute_shard", "read_shards", "merge_shards",
           "shard_range", "fold", "fold_queries", "write_folded"]
