"""The k largest similarities of each row of ``x`` to a set of references, exact or via FAISS.

NNN's bias and CSLS's neighbourhood term both need, for every gallery item r, the sorted top-K
values of s(q, r) = q . r over a reference set of queries. ``ReferenceTopK.run(x, refs, k)``
returns them as an (n_x, k) float32 array, descending.

Exact backend: ``nnn.methods._exact.exact_topk`` (torch GEMM + selection, CPU or CUDA).

FAISS backend: an inner-product index over the references (``IndexFlatIP``, or ``IndexIVFFlat`` /
the float16 ``IndexIVFScalarQuantizer`` with FAISS k-means lists), held by a ``ReferenceIndex``:
built per call from a reference array, or built once by the user and passed instead of the
references (a fixed reference set searched for many galleries), and saved to a folder
(``ReferenceIndex.save`` / ``load``: FAISS's own file, the IVF kinds' references, ``meta.json``
with the references' sha256 digest; see ``nnn._index_io``). GPU FAISS (when
present and requested) and the flat index search it with the gallery rows as queries; a CPU IVF
index is searched list by list (``ivf_topk``: one GEMM per inverted list). IVF defaults:
``default_nlist`` lists, ``default_nprobe`` of them searched; rows whose probed lists hold fewer
than k references are completed exactly (``complete_short_rows``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nnn._arrays import as_matrix, as_tensor, check_positive_int, owned_matrix
from nnn._index_io import (FAISS_FILE, array_digest, check_digest, library_versions,
                           publish_dir, read_faiss, read_meta, verify_files, write_meta)
from nnn._threads import one_thread_workers
from nnn.errors import MissingDependencyError
from nnn.methods._exact import DTYPES, ROUTES, choose_route, exact_topk

BACKENDS = ("exact", "faiss")
INDEXES = ("flat", "ivf", "ivf_fp16")

#: k-means training sample per IVF list (FAISS samples at most this many references per list;
#: its own default, 256, makes CPU training at 591k references take minutes)
IVF_TRAIN_POINTS_PER_LIST = 64
#: ``default_nprobe`` probes enough lists to scan about IVF_SCAN_PER_K * k references per gallery
#: item, and at least IVF_MIN_SCAN (see ``default_nprobe`` and benchmarks/RESULTS.md)
IVF_SCAN_PER_K = 4
IVF_MIN_SCAN = 512
#: the largest k a GPU FAISS search accepts
GPU_FAISS_MAX_K = 2048
logger = logging.getLogger(__name__)


def faiss_index(refs: np.ndarray, *, index: str, nlist: int | None = None,
                use_gpu: bool = False):
    """An inner-product FAISS index holding ``refs`` (n_r, d) float32.

    "flat": ``IndexFlatIP``. "ivf": ``IndexIVFFlat``; "ivf_fp16": ``IndexIVFScalarQuantizer``
    storing the references as float16 (half the memory; similarities off by < 1e-3 for unit
    vectors). IVF indexes get ``nlist`` lists (default ``default_nlist``; at most n_r) from
    spherical k-means on at most ``IVF_TRAIN_POINTS_PER_LIST`` references per list; set
    ``nprobe`` before a FAISS search.
    """
    faiss = import_faiss()

    n_r, d = refs.shape
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    else:
        nlist = default_nlist(n_r) if nlist is None else min(nlist, n_r)
        quantizer = faiss.IndexFlatIP(d)  # the index keeps a reference to it
        if index == "ivf":
            idx = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            idx = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist,
                                                faiss.ScalarQuantizer.QT_fp16,
                                                faiss.METRIC_INNER_PRODUCT)
            idx.by_residual = False  # lists hold the float16 references themselves (ivf_topk)
        idx.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
        idx.train(refs)
    if use_gpu:
        idx = faiss_to_gpu(idx)
    idx.add(refs)
    return idx


def faiss_to_gpu(idx):
    """The CPU FAISS index ``idx`` copied to GPU 0 (holding the resources it needs)."""
    faiss = import_faiss()
    resources = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(resources, 0, idx)
    gpu.gpu_resources = resources  # must outlive the GPU index
    return gpu


def import_faiss():
    """The ``faiss`` module (imported lazily: only the FAISS backend needs it), or
    ``MissingDependencyError`` (an ImportError, a user error) saying which extra installs it."""
    try:
        import faiss
    except ImportError as e:
        raise MissingDependencyError(f"the FAISS backend needs the 'faiss' package ({e}); install "
                          "nnn-hubness[cpu] (faiss-cpu) or, for GPU FAISS, nnn-hubness[gpu] "
                          "(faiss-gpu-cu12) instead, or use backend='exact'") from e
    return faiss


def default_nlist(n_refs: int) -> int:
    """IVF lists for ``n_refs`` references: about 4 sqrt(n_refs), but at least 39 references per
    list (FAISS's minimum for training k-means), and at least one list."""
    return max(1, min(int(round(4 * math.sqrt(n_refs))), n_refs // 39))


def default_nprobe(n_refs: int, nlist: int, k: int) -> int:
    """IVF lists to search for k neighbours: enough to scan max(IVF_SCAN_PER_K * k, IVF_MIN_SCAN)
    references on average (n_refs / nlist per list), at most all ``nlist``.

    At 118k references and k = 128 that is 6 of 1,376 lists (0.4% of the references). Below about
    IVF_MIN_SCAN references it is every list, i.e. exact, where exact costs milliseconds anyway:
    on 500 real CLIP references (k = 16) probing 8 of 12 lists still found only 96% of the exact
    top-k and moved R@1 by up to 0.4 points. Measured accurate at 118k-592k references (synthetic);
    at 20k with k = 128 it was not, and exact takes < 1 s there (benchmarks/RESULTS.md).
    """
    scan = max(IVF_SCAN_PER_K * k, IVF_MIN_SCAN)
    return max(1, min(nlist, math.ceil(scan * nlist / n_refs)))


def ivf_topk(idx, x: np.ndarray, k: int, nprobe: int, *, memory_budget_mb: float) -> np.ndarray:
    """Sorted top-k similarities (n_x, k) float32 of ``x`` (n_x, d) to the references of the CPU
    IVF index ``idx``, searching for each row the ``nprobe`` lists whose centroids are most
    similar to it; a row whose lists hold fewer than k references is padded with -inf.

    The values are those of ``idx.search`` with ``idx.nprobe = nprobe``, found the other way
    round: FAISS scans each row's lists on its own, re-reading the same lists from memory for
    every row (memory-bound: about 2 GFLOP/s on a 2-core CPU); here the (row, list) pairs are
    grouped by list and each list is multiplied once with all rows that probe it, as
    ``faiss.contrib.big_batch_search`` does (hand-written: that helper prints progress even at
    verbose=0 and pays a ``faiss.knn`` call per list). Rows are taken in blocks whose
    (rows x nprobe) candidate buffers fit ``memory_budget_mb``.
    """
    faiss = import_faiss()

    n_x, d = x.shape
    lists = idx.invlists
    dtype = np.float16 if lists.code_size == 2 * d else np.float32  # "ivf_fp16" or "ivf"
    rows = max(1, min(n_x, int(memory_budget_mb * 2**20 // (nprobe * (2 * k + d) * 4))))
    sizes = np.array([lists.list_size(i) for i in range(idx.nlist)])
    out = np.empty((n_x, k), dtype=np.float32)
    for start in range(0, n_x, rows):
        xb = x[start:start + rows]
        probe = idx.quantizer.search(xb, nprobe)[1].ravel()       # row i's lists at i*nprobe...
        order = np.argsort(probe, kind="stable")                    # (row, list) pairs by list
        bounds = np.searchsorted(probe[order], np.arange(idx.nlist + 1))
        xq = as_tensor(xb)[torch.from_numpy(order // nprobe)]      # (b * nprobe, d)
        cand = torch.full((len(order), k), -torch.inf)

        def scan(to_scan):
            """Fill ``cand`` for the (row, list) pairs of the lists ``to_scan``."""
            for lst in to_scan:
                size = int(sizes[lst])
                codes = faiss.rev_swig_ptr(lists.get_codes(int(lst)), size * lists.code_size)
                refs = torch.from_numpy(codes.view(dtype).reshape(size, d)).float()
                sims = xq[bounds[lst]:bounds[lst + 1]] @ refs.T
                if size > k:
                    sims = torch.topk(sims, k, dim=1, sorted=False).values
                cand[bounds[lst]:bounds[lst + 1], :size] = sims

        work = np.diff(bounds) * sizes                              # pairs x references
        to_scan = np.flatnonzero(work)
        to_scan = to_scan[np.argsort(-work[to_scan], kind="stable")]  # largest first
        # The per-list products are small: MKL's threads would meet at a barrier after each one,
        # which costs a scheduler time slice whenever another process holds a core (measured
        # 6x slower with one busy process on 2 cores). So each of ``workers`` one-thread
        # workers scans every workers-th list.
        workers = torch.get_num_threads()
        one_thread_workers(lambda w: scan(to_scan[w::workers]), workers)
        with torch.inference_mode():
            by_row = torch.empty_like(cand)
            by_row[torch.from_numpy(order)] = cand
            out[start:start + len(xb)] = torch.topk(by_row.view(len(xb), nprobe * k), k,
                                                    dim=1).values.numpy()
    return out


def faiss_topk(idx, x: np.ndarray, k: int) -> np.ndarray:
    """Sorted top-k similarities (n_x, k) float32 of ``x`` (n_x, d) from ``idx.search``; a row
    for which an IVF search found fewer than k neighbours (FAISS id -1) is padded with -inf."""
    sims, ids = idx.search(x, k)
    sims[ids < 0] = -np.inf
    return np.ascontiguousarray(sims, dtype=np.float32)


def complete_short_rows(top: np.ndarray, x: np.ndarray, refs: np.ndarray, k: int, *,
                        device: torch.device, memory_budget_mb: float) -> np.ndarray:
    """``top`` (n_x, k) with each row padded with -inf (too few references in its probed IVF
    lists) replaced by its exact top-k against ``refs`` (n_r, d); changes ``top`` in place."""
    short = np.flatnonzero(np.isneginf(top[:, -1]))
    if len(short):
        logger.warning("%d of %d gallery items have fewer than k=%d references in their probed "
                       "IVF lists; their top-k comes from an exact search (raise nprobe or lower "
                       "nlist to avoid it)", len(short), len(top), k)
        xs = torch.from_numpy(x[short]).to(device)
        top[short] = exact_topk(xs, as_tensor(refs).to(device), k,
                                memory_budget_mb=memory_budget_mb, progress=False).cpu().numpy()
    return top


def gpu_faiss_available() -> bool:
    """True when the installed FAISS has GPU support and sees a GPU."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class ReferenceIndex:
    """A FAISS inner-product index over a fixed reference set, built once and searched by many fits.

    ``ReferenceIndex(refs (n_r, d), index=, nlist=, use_gpu_faiss=, normalize=)`` checks ``refs``
    (``normalize``: L2-normalise a copy; else non-unit rows warn) and builds ``index`` "flat",
    "ivf" or "ivf_fp16" with ``nlist`` lists (None: ``default_nlist``; at most n_r), see
    ``faiss_index``. ``use_gpu_faiss``: "auto" (GPU FAISS when installed and it sees a GPU),
    True or False. Pass it as ``query_bank`` to ``NNN(backend="faiss").fit``: the index kind,
    nlist and GPU placement are this object's (the NNN options ``index``, ``nlist`` and
    ``use_gpu_faiss`` do not apply to it); ``nprobe`` and k stay per-fit options.

    Attributes: ``index`` (str), ``nlist`` (int, None for "flat"), ``use_gpu`` (bool),
    ``n_refs``, ``dim``, ``faiss_index`` (the trained, filled FAISS index) and ``refs`` (n_r, d)
    float32, a private copy kept for the exact completion of short IVF rows (``complete_short_rows``).

    ``save(path)`` writes it to a folder atomically and ``ReferenceIndex.load(path,
    expected_refs=)`` reads it back, checked (``digest`` identifies the references;
    ``verify(refs)`` says whether they are the given ones).
    """

    def __init__(self, refs, *, index: str = "ivf", nlist: int | None = None,
                 use_gpu_faiss: bool | str = "auto", normalize: bool = False):
        _check_choice(index, "index", INDEXES)
        _check_choice(use_gpu_faiss, "use_gpu_faiss", ("auto", True, False))
        if nlist is not None:
            check_positive_int(nlist, "nlist")
        gpu_ok = gpu_faiss_available()
        if use_gpu_faiss is True and not gpu_ok:
            raise ValueError(_NO_GPU_FAISS)
        # the index must not change when the caller edits its array
        checked = owned_matrix(refs, "refs", normalize=normalize)
        self._build(checked, index=index, nlist=nlist, use_gpu=use_gpu_faiss is True or (
            use_gpu_faiss == "auto" and gpu_ok))

    @classmethod
    def from_checked(cls, refs: np.ndarray, *, index: str, nlist: int | None,
                     use_gpu: bool) -> "ReferenceIndex":
        """Build from ``refs`` (n_r, d) already checked by ``as_matrix`` (kept, not copied)."""
        self = cls.__new__(cls)
        self._build(refs, index=index, nlist=nlist, use_gpu=use_gpu)
        return self

    def _build(self, refs: np.ndarray, *, index: str, nlist: int | None, use_gpu: bool) -> None:
        self.n_refs, self.dim = refs.shape
        self.index, self.use_gpu, self.refs = index, use_gpu, refs
        self.nlist = None if index == "flat" else (
            default_nlist(self.n_refs) if nlist is None else min(nlist, self.n_refs))
        self.faiss_index = faiss_index(refs, index=index, nlist=self.nlist, use_gpu=use_gpu)

    def __len__(self) -> int:
        return self.n_refs

    # -- identity, saving and loading ----------------------------------------------------------
    @property
    def digest(self) -> str:
        """``"sha256:..."`` of the references (float32 bytes and shape, ``array_digest``),
        computed on first use (about 1 s per 1.6 GB) and saved with the index."""
        if getattr(self, "_digest", None) is None:
            self._digest = array_digest(self.refs)
        return self._digest

    def verify(self, refs, *, normalize: bool = False) -> None:
        """``ValueError`` unless ``refs`` (n_r, d) are the references this index holds (same
        shape and float32 values; ``normalize`` as at construction)."""
        checked = as_matrix(refs, "refs", normalize=normalize)
        check_digest(self.digest, array_digest(checked), "this ReferenceIndex",
                     "the references given")

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the index to the folder ``path`` atomically (``nnn._index_io``): ``index.faiss``
        (FAISS's ``write_index``; a GPU index is copied to the CPU first), ``refs.npy`` for the
        IVF kinds (their exact completion of short rows needs the float32 references; a flat
        index holds them itself) and ``meta.json`` (kind, nlist, n_refs, dim, the references'
        digest, library versions, size and sha256 of each file). An existing ``path`` is
        replaced only with ``overwrite``, once the new index is complete. Returns the path."""
        faiss = import_faiss()
        idx = faiss.index_gpu_to_cpu(self.faiss_index) if self.use_gpu else self.faiss_index
        with publish_dir(path, kind=_SAVED_KIND, overwrite=overwrite,
                         what="ReferenceIndex") as tmp:
            faiss.write_index(idx, str(tmp / FAISS_FILE))
            if self.index != "flat":
                np.save(tmp / _REFS_FILE, self.refs, allow_pickle=False)
            write_meta(tmp, {"kind": _SAVED_KIND, "index": self.index, "nlist": self.nlist,
                             "n_refs": self.n_refs, "dim": self.dim, "refs_digest": self.digest,
                             "versions": library_versions()})
        return Path(path)

    @classmethod
    def load(cls, path, *, expected_refs=None, verify: bool = False,
             use_gpu_faiss: bool | str = "auto", normalize: bool = False) -> "ReferenceIndex":
        """A ``ReferenceIndex`` saved by ``save``.

        Always checked: ``meta.json`` (format, kind), each file's size, that FAISS can read
        ``index.faiss`` and that it holds ``n_refs`` vectors of ``dim`` of the recorded kind.
        ``verify``: also re-hash every file (a full read; catches a changed byte).
        ``expected_refs`` (n_r, d): ``ValueError`` unless the index was built from exactly
        these references (digest; ``normalize`` as at construction). ``use_gpu_faiss`` as in
        the constructor. A corrupt, truncated or mismatched index raises a one-line
        ``ValueError`` naming the file; nothing is written.
        """
        _check_choice(use_gpu_faiss, "use_gpu_faiss", ("auto", True, False))
        if use_gpu_faiss is True and not gpu_faiss_available():
            raise ValueError(_NO_GPU_FAISS)
        faiss = import_faiss()
        path = Path(path)
        meta = read_meta(path, _SAVED_KIND, "ReferenceIndex", _REBUILD)
        if verify:
            verify_files(path, meta, "ReferenceIndex", _REBUILD)
        idx = read_faiss(path / FAISS_FILE, "ReferenceIndex", _REBUILD)
        kind = meta.get("index")
        want = {"flat": "IndexFlatIP", "ivf": "IndexIVFFlat", "ivf_fp16": "IndexIVFScalarQuantizer"}
        if (type(idx).__name__ != want.get(kind) or idx.metric_type != faiss.METRIC_INNER_PRODUCT
                or idx.d != meta.get("dim") or idx.ntotal != meta.get("n_refs")):
            raise ValueError(f"ReferenceIndex {str(path)!r}: {FAISS_FILE} holds a "
                             f"{type(idx).__name__} of {idx.ntotal} x {idx.d} but meta.json "
                             f"says {kind!r} of {meta.get('n_refs')} x {meta.get('dim')} "
                             f"(files from different indexes); {_REBUILD}")
        if kind == "flat":
            refs = idx.reconstruct_n(0, idx.ntotal)
        else:
            refs = np.load(path / _REFS_FILE, allow_pickle=False)
            if refs.shape != (idx.ntotal, idx.d) or refs.dtype != np.float32:
                raise ValueError(f"ReferenceIndex {str(path / _REFS_FILE)!r} holds "
                                 f"{refs.shape} {refs.dtype}, not ({idx.ntotal}, {idx.d}) "
                                 f"float32; {_REBUILD}")
        self = cls.__new__(cls)
        self.n_refs, self.dim = refs.shape
        self.index, self.refs, self.nlist = kind, refs, meta.get("nlist")
        self._digest = meta["refs_digest"]
        if verify and array_digest(refs) != self._digest:
            raise ValueError(f"ReferenceIndex {str(path)!r}: its references do not match the "
                             f"digest in meta.json; {_REBUILD}")
        if expected_refs is not None:
            checked = as_matrix(expected_refs, "expected_refs", normalize=normalize)
            check_digest(self._digest, array_digest(checked), f"ReferenceIndex {str(path)!r}",
                         "expected_refs")
        self.use_gpu = use_gpu_faiss is True or (use_gpu_faiss == "auto" and gpu_faiss_available())
        self.faiss_index = faiss_to_gpu(idx) if self.use_gpu else idx
        return self

    def __repr__(self) -> str:
        return (f"ReferenceIndex(index={self.index!r}, nlist={self.nlist}, n_refs={self.n_refs}, "
                f"dim={self.dim}, use_gpu={self.use_gpu})")

    def topk(self, x: np.ndarray, k: int, *, nprobe: int | None = None,
             device: torch.device = torch.device("cpu"),
             memory_budget_mb: float = 512.0) -> np.ndarray:
        """Sorted top-k similarities (n_x, k) float32 of ``x`` (n_x, d) float32 to the references.

        IVF: ``nprobe`` lists per row (None: ``default_nprobe``; at most nlist); rows whose probed
        lists hold fewer than k references get their exact top-k (on ``device``). The caller
        checks ``x`` and ``k <= n_refs``.
        """
        if self.index == "flat":
            check_gpu_search(self.use_gpu, k)
            return faiss_topk(self.faiss_index, x, k)
        nprobe = min(self.nlist, nprobe or default_nprobe(self.n_refs, self.nlist, k))
        check_gpu_search(self.use_gpu, k, nprobe)
        if self.use_gpu:
            self.faiss_index.nprobe = nprobe
            top = faiss_topk(self.faiss_index, x, k)
        else:
            top = ivf_topk(self.faiss_index, x, k, nprobe, memory_budget_mb=memory_budget_mb)
        return complete_short_rows(top, x, self.refs, k, device=device,
                                   memory_budget_mb=memory_budget_mb)


def check_gpu_search(use_gpu: bool, k: int, nprobe: int | None = None, *, k_name: str = "k_max",
                     remedy: str = "use_gpu_faiss=False or backend='exact'") -> None:
    """Raise ``ValueError`` when a GPU FAISS search is asked for more neighbours, or to probe
    more IVF lists, than GPU FAISS allows (``GPU_FAISS_MAX_K`` each); ``remedy`` names the way
    out besides lowering the value."""
    if not use_gpu:
        return
    if k > GPU_FAISS_MAX_K:
        raise ValueError(f"GPU FAISS returns at most {GPU_FAISS_MAX_K} neighbours, but "
                         f"{k_name}={k} were asked for; lower {k_name} or use {remedy}")
    if nprobe is not None and nprobe > GPU_FAISS_MAX_K:
        raise ValueError(f"GPU FAISS probes at most {GPU_FAISS_MAX_K} lists, but nprobe={nprobe} "
                         f"was asked for; lower nprobe or use {remedy}")


#: a saved ReferenceIndex: its meta.json kind, the references file of the IVF kinds, the remedy
_SAVED_KIND = "reference_index"
_REFS_FILE = "refs.npy"
_REBUILD = "rebuild it with ReferenceIndex(refs, ...).save(path) (CLI: nnn-index refs)"

_NO_GPU_FAISS = ("use_gpu_faiss=True but the installed FAISS has no GPU support or sees no GPU; "
                 "install nnn-hubness[gpu] (faiss-gpu-cu12) instead of [cpu], or use "
                 "use_gpu_faiss='auto'/False")


@dataclass(frozen=True)
class ReferenceTopK:
    """How to find each row's top-k reference similarities (options checked on construction).

    backend "exact": GEMM + selection (``nnn.methods._exact``). ``precision`` (float32 inputs):
    "auto" picks the fastest route that gives the float32 result on this CPU (``choose_route``:
    a bfloat16/float16 pre-selection re-scored in float32, torch or NumPy float32), or name one
    of ``ROUTES``. ``dtype`` "float16"/"bfloat16" (CUDA only) instead runs the whole GEMM in half
    precision (approximate; values are averaged in float32 or wider by the caller). backend "faiss": ``index`` "flat" (exact, FAISS
    BLAS), "ivf" or "ivf_fp16" (``nlist`` lists, default ``default_nlist``; ``nprobe`` lists
    searched, default ``default_nprobe``; see ``faiss_index`` and ``ivf_topk``);
    ``use_gpu_faiss`` "auto" (GPU FAISS when installed and the device is CUDA), True or False.
    """

    backend: str = "exact"
    index: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    dtype: str = "float32"
    precision: str = "auto"
    memory_budget_mb: float = 512.0
    ref_batch_size: int | None = None
    use_gpu_faiss: bool | str = "auto"
    progress: bool = True

    def __post_init__(self):
        _check_choice(self.backend, "backend", BACKENDS)
        _check_choice(self.index, "index", INDEXES)
        _check_choice(self.dtype, "dtype", tuple(DTYPES))
        _check_choice(self.precision, "precision", ROUTES)
        if self.precision != "auto" and (self.dtype != "float32" or self.backend == "faiss"):
            raise ValueError(f"precision={self.precision!r} chooses how backend='exact' computes "
                             "its float32 result; with "
                             + (f"dtype={self.dtype!r}" if self.dtype != "float32"
                                else "backend='faiss'")
                             + " leave precision='auto'")
        _check_choice(self.use_gpu_faiss, "use_gpu_faiss", ("auto", True, False))
        if self.nlist is not None:
            check_positive_int(self.nlist, "nlist")
        if self.nprobe is not None:
            check_positive_int(self.nprobe, "nprobe")
        if self.ref_batch_size is not None:
            check_positive_int(self.ref_batch_size, "ref_batch_size")
        budget = self.memory_budget_mb
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
                or not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"memory_budget_mb must be a finite number > 0 (MiB), got {budget!r}")
        if self.backend == "faiss" and self.dtype != "float32":
            raise ValueError(f"dtype={self.dtype!r} applies to backend='exact' only; the FAISS "
                             "backend searches float32 vectors")

    def check_device(self, device: torch.device) -> None:
        """Raise ``ValueError`` when the options cannot run on ``device``."""
        if self.dtype != "float32" and device.type != "cuda":
            raise ValueError(f"dtype={self.dtype!r} needs a CUDA device (got device "
                             f"{str(device)!r}); CPU GEMMs in half precision are slow or "
                             "unsupported here: use dtype='float32' on the CPU")
        if self.use_gpu_faiss is True and not gpu_faiss_available():
            raise ValueError(_NO_GPU_FAISS)
        if self.precision == "float32_numpy" and device.type != "cpu":
            raise ValueError(f"precision='float32_numpy' runs NumPy's BLAS on the CPU, but the "
                             f"device is {str(device)!r}; use precision='auto' or 'float32'")

    def route(self, n_x: int, refs, k: int, device: torch.device) -> str:
        """How ``run`` computes the top-``k`` of ``n_x`` rows against ``refs`` (an (n_r, d)
        array or a ``ReferenceIndex``) on ``device``: "faiss", or the exact route
        (``choose_route``; "float32" also names a half-precision ``dtype``'s GEMM)."""
        if self.backend == "faiss":
            return "faiss"
        if self.dtype != "float32":
            return "float32"
        n_r, d = refs.shape
        return choose_route(self.precision, device, n_x, n_r, d, k)

    def run(self, x: np.ndarray, refs, k: int, device: torch.device) -> np.ndarray:
        """Sorted top-k similarities (n_x, k) float32 of ``x`` (n_x, d) to ``refs``: an (n_r, d)
        array, or (backend "faiss") a prebuilt ``ReferenceIndex``, whose own index kind, nlist
        and GPU placement then apply."""
        self.check_device(device)
        if isinstance(refs, ReferenceIndex) and self.backend != "faiss":
            raise ValueError(f"a prebuilt ReferenceIndex needs backend='faiss' (got backend="
                             f"{self.backend!r}); use backend='faiss' or pass the reference array")
        if self.backend == "faiss":
            if not isinstance(refs, ReferenceIndex):
                use_gpu = self.use_gpu_faiss is True or (
                    self.use_gpu_faiss == "auto" and device.type == "cuda"
                    and gpu_faiss_available())
                check_gpu_search(use_gpu, k)  # before the (slow) build
                refs = ReferenceIndex.from_checked(refs, index=self.index, nlist=self.nlist,
                                                   use_gpu=use_gpu)
            return refs.topk(x, k, nprobe=self.nprobe, device=device,
                             memory_budget_mb=self.memory_budget_mb)
        dt = DTYPES[self.dtype]
        xt = as_tensor(x).to(device=device, dtype=dt)
        rt = as_tensor(refs).to(device=device, dtype=dt)
        top = exact_topk(xt, rt, k, memory_budget_mb=self.memory_budget_mb,
                         ref_batch_size=self.ref_batch_size, progress=self.progress,
                         route=self.route(len(x), refs, k, device))
        return top.cpu().numpy()


def _check_choice(value, name: str, choices: tuple) -> None:
    # ``type`` is compared too, so that 1 is not taken for True
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
