"""The k largest similarities of each row of ``x`` to a set of references, exact or via FAISS.

NNN's bias and CSLS's neighbourhood term both need, for every gallery item r, the sorted top-K
values of s(q, r) = q . r over a reference set of queries. ``ReferenceTopK.run(x, refs, k)``
returns them as an (n_x, k) float32 array, descending.

Exact backend (torch, CPU or CUDA): gallery rows are processed in blocks whose (rows x ref_chunk)
similarity buffer stays within ``memory_budget_mb``; each block is one GEMM into a reused buffer
(no per-block allocation), followed by a selection (``block_topk``) that avoids a full
``torch.topk`` over every row. With ``ref_batch_size`` the references are streamed in chunks and
a running top-k is merged, so neither n_x x n_refs nor a full block over all references is held.

FAISS backend: an inner-product index (``IndexFlatIP``, ``IndexIVFFlat`` or the float16
``IndexIVFScalarQuantizer``) over the references,
searched with the gallery rows as queries; GPU FAISS when present and requested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from nnn._arrays import as_tensor, check_positive_int

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BACKENDS = ("exact", "faiss")
INDEXES = ("flat", "ivf", "ivf_fp16")

#: columns per group in ``block_topk``'s pre-selection (measured on a 2-core AVX-512 CPU: 16 is
#: the fastest of 8..128 for 118k columns and k = 128)
_GROUP = 16
#: k-means training sample per IVF list (FAISS samples at most this many references per list;
#: its own default, 256, makes CPU training at 591k references take minutes)
IVF_TRAIN_POINTS_PER_LIST = 64
#: the largest k a GPU FAISS search accepts
GPU_FAISS_MAX_K = 2048
#: x-rows x references below this finish in about a second: no progress bar for them.
_PROGRESS_MIN_SCORES = 10**9


def block_topk(sims: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values of each row of ``sims`` (b, c) -> (b, k), in no particular order.

    ``torch.topk`` over long rows costs about as much as a quarter of the GEMM that made them on a
    CPU, so long rows are pre-selected (hand-written; torch has no cheaper exact row-wise top-k):
    the first ``g*m`` columns are split into m strided groups {j, j+m, ..., j+(g-1)m}. Let t be
    the row's k-th largest value: fewer than k groups have a maximum above t and all are among
    the k groups with the largest maxima; those k groups hold at least k values >= t. So the top-k
    of their k*g columns plus the < g leftover columns equals the row's top-k, ties included.
    ``sims`` may be a strided view.
    """
    b, c = sims.shape
    m = c // _GROUP
    if m < 4 * k:  # short rows: the plain selection is as fast
        return torch.topk(sims, k, dim=1, sorted=False).values
    main = sims[:, :_GROUP * m].view(b, _GROUP, m)
    group_max = main.amax(dim=1)                                            # (b, m)
    groups = torch.topk(group_max, k, dim=1, sorted=False).indices          # (b, k)
    offsets = torch.arange(_GROUP, device=sims.device) * m                  # (g,)
    cols = (groups[:, None, :] + offsets[None, :, None]).reshape(b, _GROUP * k)
    candidates = sims.gather(1, cols)                                       # (b, g*k)
    if c > _GROUP * m:
        candidates = torch.cat([candidates, sims[:, _GROUP * m:]], dim=1)
    return torch.topk(candidates, k, dim=1, sorted=False).values


def exact_topk(x: torch.Tensor, refs: torch.Tensor, k: int, *, memory_budget_mb: float,
               ref_batch_size: int | None = None, progress: bool = True) -> torch.Tensor:
    """Sorted top-k similarities (n_x, k) float32 of ``x`` (n_x, d) against ``refs`` (n_r, d).

    Both tensors share a device and dtype (the GEMM runs in that dtype; values are returned as
    float32). ``k <= n_r`` is the caller's check.
    """
    n_x, n_r = len(x), len(refs)
    chunk = n_r if ref_batch_size is None else min(ref_batch_size, n_r)
    rows = max(1, min(n_x, int(memory_budget_mb * 2**20 // (chunk * x.element_size()))))
    buf = torch.empty(rows, chunk, dtype=x.dtype, device=x.device)
    out = torch.empty(n_x, k, dtype=torch.float32, device=x.device)
    starts = range(0, n_x, rows)
    bar = tqdm(starts, desc="top-k reference similarities", unit="block", leave=False,
               disable=not progress or n_x * n_r < _PROGRESS_MIN_SCORES)
    with torch.inference_mode():
        for start in bar:
            xb = x[start:start + rows]
            best = None                                                     # running (b, <=k)
            for r0 in range(0, n_r, chunk):
                rb = refs[r0:r0 + chunk]
                sims = torch.mm(xb, rb.T, out=buf[:len(xb), :len(rb)])
                top = block_topk(sims, min(k, len(rb)))
                if best is not None:
                    merged = torch.cat([best, top], dim=1)
                    top = torch.topk(merged, min(k, merged.shape[1]), dim=1, sorted=False).values
                best = top
            out[start:start + len(xb)] = torch.sort(best.float(), dim=1, descending=True).values
    return out


def faiss_index(refs: np.ndarray, *, index: str, nlist: int | None, nprobe: int,
                use_gpu: bool):
    """An inner-product FAISS index holding ``refs`` (n_r, d) float32.

    "flat": ``IndexFlatIP``. "ivf": ``IndexIVFFlat``; "ivf_fp16": ``IndexIVFScalarQuantizer``
    storing float16 vectors (half the bytes to scan: faster on memory-bound CPUs, similarities
    off by ~1e-6). IVF indexes get ``nlist`` lists (default ``default_nlist``; at most n_r),
    k-means trained on at most ``IVF_TRAIN_POINTS_PER_LIST`` references per list, and search
    ``nprobe`` lists.
    """
    import faiss  # lazy: only the FAISS backend needs it

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
        idx.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
        idx.train(refs)
        idx.nprobe = min(nprobe, nlist)
    if use_gpu:
        resources = faiss.StandardGpuResources()
        idx = faiss.index_cpu_to_gpu(resources, 0, idx)
        idx.gpu_resources = resources  # must outlive the GPU index
    idx.add(refs)
    return idx


def default_nlist(n_refs: int) -> int:
    """IVF lists for ``n_refs`` references: about 4 sqrt(n_refs), but at least 39 references per
    list (FAISS's minimum for training k-means), and at least one list."""
    return max(1, min(int(round(4 * math.sqrt(n_refs))), n_refs // 39))


def faiss_topk(idx, x: np.ndarray, k: int) -> np.ndarray:
    """Sorted top-k similarities (n_x, k) float32 of ``x`` (n_x, d) against the index's vectors.

    Raises ``RuntimeError`` when an IVF search visits too few lists to find k neighbours (FAISS
    pads such rows with id -1).
    """
    sims, ids = idx.search(x, k)
    missing = ids < 0
    if missing.any():
        rows = np.flatnonzero(missing.any(axis=1))
        found = int((~missing[rows]).sum(axis=1).min())
        nprobe = getattr(idx, "nprobe", None)
        nlist = getattr(idx, "nlist", None)
        raise RuntimeError(
            f"the FAISS index returned fewer than k={k} neighbours for {len(rows)} of {len(x)} "
            f"gallery items (as few as {found}) with nprobe={nprobe} of nlist={nlist} lists; "
            "raise nprobe, lower nlist or k_max, or use index='flat'")
    return np.ascontiguousarray(sims, dtype=np.float32)


def gpu_faiss_available() -> bool:
    """True when the installed FAISS has GPU support and sees a GPU."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class ReferenceTopK:
    """How to find each row's top-k reference similarities (options checked on construction).

    backend "exact": torch GEMM + selection in ``dtype`` (half precision on CUDA only; values are
    averaged in float32 or wider by the caller). backend "faiss": ``index`` "flat" (exact, FAISS
    BLAS), "ivf" or "ivf_fp16" (``nlist`` lists, default ``default_nlist``; ``nprobe`` lists
    searched; see ``faiss_index``);
    ``use_gpu_faiss`` "auto" (GPU FAISS when installed and the device is CUDA), True or False.
    """

    backend: str = "exact"
    index: str = "flat"
    nlist: int | None = None
    nprobe: int = 32
    dtype: str = "float32"
    memory_budget_mb: float = 512.0
    ref_batch_size: int | None = None
    use_gpu_faiss: bool | str = "auto"
    progress: bool = True

    def __post_init__(self):
        _check_choice(self.backend, "backend", BACKENDS)
        _check_choice(self.index, "index", INDEXES)
        _check_choice(self.dtype, "dtype", tuple(DTYPES))
        _check_choice(self.use_gpu_faiss, "use_gpu_faiss", ("auto", True, False))
        if self.nlist is not None:
            check_positive_int(self.nlist, "nlist")
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
            raise ValueError("use_gpu_faiss=True but the installed FAISS has no GPU support or "
                             "sees no GPU; install faiss-gpu or use use_gpu_faiss='auto'/False")

    def run(self, x: np.ndarray, refs: np.ndarray, k: int, device: torch.device) -> np.ndarray:
        """Sorted top-k similarities (n_x, k) float32 of ``x`` (n_x, d) to ``refs`` (n_r, d)."""
        self.check_device(device)
        if self.backend == "faiss":
            use_gpu = self.use_gpu_faiss is True or (
                self.use_gpu_faiss == "auto" and device.type == "cuda" and gpu_faiss_available())
            if use_gpu and k > GPU_FAISS_MAX_K:
                raise ValueError(f"GPU FAISS returns at most {GPU_FAISS_MAX_K} neighbours, but "
                                 f"k_max={k} were asked for; lower k_max, use "
                                 "use_gpu_faiss=False or backend='exact'")
            idx = faiss_index(refs, index=self.index, nlist=self.nlist, nprobe=self.nprobe,
                              use_gpu=use_gpu)
            return faiss_topk(idx, x, k)
        dt = DTYPES[self.dtype]
        xt = as_tensor(x).to(device=device, dtype=dt)
        rt = as_tensor(refs).to(device=device, dtype=dt)
        top = exact_topk(xt, rt, k, memory_budget_mb=self.memory_budget_mb,
                         ref_batch_size=self.ref_batch_size, progress=self.progress)
        return top.cpu().numpy()


def _check_choice(value, name: str, choices: tuple) -> None:
    # ``type`` is compared too, so that 1 is not taken for True
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
