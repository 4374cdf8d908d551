"""One short GPU session's check of every GPU path: correctness against float64 on the CPU first,
then timings, printed as one table (issue 9). Run it through ``gpu_check.sh``, which puts the
carried packages of ``.gpu_deps`` (``benchmarks/gpu_deps.sh``) on the path.

Sections, each in its own subprocess with its own time limit (a section that fails, crashes or
hangs becomes an ERROR row and the others still run; all together stay within ``--budget-s``):

- ``tests``:   the suite's CUDA tests (files under tests/ that test ``cuda.is_available()``,
  ``-k cuda``), with a placeholder ``faiss`` module where FAISS is not installed; and
  ``run.py debug=tiny logger=none device=...`` (the Hydra runner, with the carried hydra);
- ``nnn``:     NNN's exact bias at COCO scale (5,000 x 591,753 x 512, k = 128) for every row of
  ``NNN_VARIANTS`` (float32, TF32, float16, bfloat16, the exact half-precision pre-selections,
  ...): the max bias error against a float64
  reference on sampled rows, the kernel on device tensors, ``NNN.fit`` from NumPy, the bare GEMM,
  and the authors' nnn-retrieval 1.0.1 (their torch GPU path) in the same run;
- ``bank``:    QB-Norm and DBNorm: CUDA against CPU on a small case, the float64 log-normaliser on
  sampled gallery items, time and peak GPU memory of a fit and of a beta grid (one fit with the
  grid, then ``with_params`` + ``search`` of the queries per beta);
- ``extract``: open_clip ViT-B-32 and ViT-L-14 with random weights on generated JPEGs of COCO-like
  sizes: forward-only against the pipeline (DataLoader decode, preprocessing, fp16 autocast, L2
  normalisation) and against ``embed_split`` into a cache (shards, captions, cache store);
  images/s and texts/s; the Lightning path (``strategy="ddp"`` on one device) against it;
- ``faiss``:   GPU FAISS IVF against exact if FAISS with GPU support imports; else why not, with
  the size of the faiss-gpu wheel measured by gpu_deps.sh (on ``--device cpu``: CPU FAISS).

Sizes: full (default), ``--small`` (a CPU dry run in minutes), ``--tiny`` (seconds; the tests).

    bash benchmarks/gpu_check.sh                         # the GPU machine, <= 8 minutes
    bash benchmarks/gpu_check.sh --device cpu --small    # dry run on a CPU

Writes table.md, results.json, log.txt and junit.xml to ``--out`` (default: $OUT when set, else
outputs/gpu_check). Exit status 1 when a row is FAIL or ERROR.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:  # the bench_* helpers are reused, not copied
    sys.path.insert(0, str(BENCH))

MiB = 2**20
SECTIONS = ("tests", "nnn", "bank", "extract", "faiss")
GPU_DEPS = Path(os.environ.get("NNN_GPU_DEPS", REPO / ".gpu_deps"))
#: table statuses; FAIL = a check missed its bound, ERROR = an exception, a crash or a time limit
OK, FAIL, ERROR, SKIP = "ok", "FAIL", "ERROR", "skip"


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and per-section time limits (seconds) of one preset."""

    n_gallery: int
    n_refs: int
    dim: int
    k: int
    check_rows: int            # gallery rows checked against float64
    repeats: int               # timed rounds (best is reported, all are listed)
    bank: int                  # QB-Norm / DBNorm query bank rows
    gallery_bank: int          # DBNorm gallery bank rows
    n_queries: int             # queries searched per beta of the tuning grid
    check_cols: int            # gallery items checked against the float64 log-normaliser
    n_images: int
    image_sizes: tuple         # (w, h) of the generated JPEGs, cycled
    models: tuple              # open_clip names; "tiny" = TINY_MODEL below
    batch: int
    ddp_images: int            # 0: no Lightning run
    faiss_refs: int
    limits: dict = field(default_factory=dict)


COCO_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (640, 640), (427, 640))
PRESETS = {
    "full": Sizes(n_gallery=5000, n_refs=591_753, dim=512, k=128, check_rows=128, repeats=5,
                  bank=591_753, gallery_bank=118_287, n_queries=25_000, check_cols=64,
                  n_images=5000, image_sizes=COCO_SIZES, models=("ViT-B-32", "ViT-L-14"),
                  batch=256, ddp_images=1024, faiss_refs=591_753,
                  limits={"tests": 90, "nnn": 150, "bank": 75, "extract": 190, "faiss": 60}),
    "small": Sizes(n_gallery=503, n_refs=30_011, dim=64, k=16, check_rows=64, repeats=2,
                   bank=20_011, gallery_bank=5003, n_queries=1000, check_cols=32,
                   n_images=96, image_sizes=((160, 120), (120, 160), (150, 100)),
                   models=("tiny",), batch=16, ddp_images=32, faiss_refs=30_011,
                   limits={"tests": 120, "nnn": 120, "bank": 90, "extract": 240, "faiss": 90}),
    "tiny": Sizes(n_gallery=61, n_refs=2003, dim=16, k=8, check_rows=16, repeats=1,
                  bank=1009, gallery_bank=307, n_queries=50, check_cols=8,
                  n_images=8, image_sizes=((64, 48), (48, 64)), models=("tiny",), batch=4,
                  ddp_images=0, faiss_refs=2003,
                  limits={"tests": 60, "nnn": 60, "bank": 60, "extract": 90, "faiss": 60}),
}

#: NNN settings timed by the ``nnn`` section; add a row to time another option or kernel.
#: ``nnn``: NNN(...) keyword arguments besides k and device; ``tf32``: float32 GEMMs in TF32;
#: ``bound``: max |bias error| against float64 for status ok (float32: the issue's exact target
#: 1e-5; half precision: the tolerances of tests/test_nnn.py, 10-bit (TF32, fp16) and 7-bit
#: (bf16) mantissas); ``kernel`` (optional): (x, refs, k, options) -> sorted (n_x, >= k) top-k
#: tensor on device tensors, default ``exact_topk``; ``cuda_only``: skipped on the CPU.
NNN_VARIANTS = (
    dict(name="float32", nnn=dict(dtype="float32"), tf32=False, bound=1e-5),
    dict(name="TF32", nnn=dict(dtype="float32"), tf32=True, bound=2e-3, cuda_only=True),
    dict(name="float16", nnn=dict(dtype="float16"), tf32=False, bound=2e-3, cuda_only=True),
    dict(name="bfloat16", nnn=dict(dtype="bfloat16"), tf32=False, bound=2e-2, cuda_only=True),
    dict(name="float16, 4 GiB blocks", nnn=dict(dtype="float16", memory_budget_mb=4096),
         tf32=False, bound=2e-3, cuda_only=True),
    # exact: a half-precision GEMM only pre-selects, candidates are re-scored in float32
    dict(name="float16 pre-selection, float32 re-score", nnn=dict(precision="float16"),
         tf32=False, bound=1e-5),
    dict(name="bfloat16 pre-selection, float32 re-score", nnn=dict(precision="bfloat16"),
         tf32=False, bound=1e-5),
    # the same with blocks of (nearly) all 5,000 rows: fewer, larger selections per fit
    dict(name="float16 pre-selection, 8 GiB blocks",
         nnn=dict(precision="float16", memory_budget_mb=8192), tf32=False, bound=1e-5),
    dict(name="bfloat16 pre-selection, 8 GiB blocks",
         nnn=dict(precision="bfloat16", memory_budget_mb=8192), tf32=False, bound=1e-5),
    dict(name="float32, 8 GiB blocks", nnn=dict(dtype="float32", memory_budget_mb=8192),
         tf32=False, bound=1e-5, cuda_only=True),
)
#: rows of x whose low-precision GEMM is checked against its error bound (``gemm_bound_check``)
GEMM_CHECK_ROWS = 64
#: the issue's targets for the exact bias (reported next to the timings)
TARGET_S, TARGET_SPEEDUP = 0.02, 5.0
ALPHA = 0.75
#: the authors' default batch size (NNNRanker batch_size)
THEIR_BATCH = 128

BETA = 20.0
BETA_GRID = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
#: small CUDA-vs-CPU case of the bank section: |log-normaliser difference| <= beta * 2e-6 (float32
#: GEMMs on either device differ by ~sqrt(d) * 6e-8 per similarity, times beta; sums in float64)
BANK_SMALL = dict(n_gallery=203, bank=3001, gallery_bank=1009, dim=32)
#: float64 check of the full-size log-normaliser at BETA: float32 similarity error
#: (~sqrt(512) * 6e-8 = 1.4e-6) times beta, plus float32 chunk sums: 1e-4 at beta 20
LOG_NORM_BOUND = 5e-6 * BETA


# -- rows, context, timing -------------------------------------------------------------------------
@dataclass
class Context:
    """What a section gets: device, sizes, output folder and the row sink."""

    device: str
    sizes: Sizes
    out: Path
    deadline: float
    theirs: bool = True
    workers: int = 1
    rows_file: Path | None = None
    rows: list = field(default_factory=list)

    def emit(self, section: str, kind: str, what: str, status: str = OK, **values) -> dict:
        """Record one row (kind "check" or "time"); written to ``rows_file`` at once, so a
        section killed later still reports what it finished."""
        row = {"section": section, "kind": kind, "what": what, "status": status, **values}
        self.rows.append(row)
        if self.rows_file is not None:
            with open(self.rows_file, "a") as f:
                f.write(json.dumps(row, default=float) + "\n")
        print(f"[{section}] {kind} {what}: {status} "
              f"{ {k: v for k, v in values.items() if v is not None} }", flush=True)
        return row

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


@contextlib.contextmanager
def guarded(ctx: Context, section: str, what: str, kind: str = "time"):
    """Run a step; an exception becomes an ERROR row and the section goes on."""
    try:
        yield
    except Exception as e:  # every failure is reported in the table, never fatal to the run
        traceback.print_exc()
        ctx.emit(section, kind, what, ERROR, note=one_line(e))


def one_line(e: BaseException, limit: int = 240) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def measure(fn, device, repeats: int):
    """A warm-up call (its result is returned), then ``repeats`` timed calls.

    Returns (best s, every round's s, peak extra GPU MiB over the timed calls or None, result).
    """
    import torch
    from bench_nnn_bias import timed

    result = fn()
    dev = torch.device(device)
    base = None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    rounds = [timed(fn, dev) for _ in range(repeats)]
    peak = None if base is None else (torch.cuda.max_memory_allocated(dev) - base) / MiB
    return min(rounds), rounds, peak, result


def status_for(error: float, bound: float) -> str:
    return OK if math.isfinite(error) and error <= bound else FAIL


# -- section: the suite's CUDA tests ---------------------------------------------------------------
#: runs pytest; tests/test_nnn.py imports faiss at the top for its CPU tests, and the CUDA tests
#: never call it, so where FAISS does not import an empty placeholder module lets the file load
#: (``gpu_faiss_available()`` is then False)
PYTEST_WITHOUT_FAISS = """
import sys, types
try:
    import faiss
except Exception as e:  # not installed, or its libraries missing
    print(f"faiss does not import ({e}); a placeholder module stands in for it")
    sys.modules["faiss"] = types.ModuleType("faiss")
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def cuda_test_files() -> list[str]:
    """Test files that skip without CUDA (new GPU tests are picked up by this)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "cuda.is_available()" in p.read_text())


def section_tests(ctx: Context) -> None:
    import xml.etree.ElementTree as ET

    files = cuda_test_files()
    junit = ctx.out / "junit.xml"
    cmd = [sys.executable, "-c", PYTEST_WITHOUT_FAISS, "-q", "-rA", "-p", "no:cacheprovider",
           "-k", "cuda", f"--junitxml={junit}", *files]
    proc = subprocess.run(cmd, cwd=REPO, timeout=max(5.0, ctx.time_left() - 5))
    cases = ET.parse(junit).getroot().iter("testcase")
    n = 0
    for case in cases:
        n += 1
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        bad = next((c for c in case if c.tag in ("failure", "error")), None)
        skipped = next((c for c in case if c.tag == "skipped"), None)
        if bad is not None:
            ctx.emit("tests", "check", name, FAIL, note=(bad.get("message") or "")[:240])
        elif skipped is not None:
            ctx.emit("tests", "check", name, SKIP, note=(skipped.get("message") or "")[:240])
        else:
            ctx.emit("tests", "check", name, OK, seconds=float(case.get("time", 0)))
    if n == 0 or proc.returncode not in (0, 5):
        ctx.emit("tests", "check", f"pytest {' '.join(files)} -k cuda",
                 ERROR if n == 0 else FAIL, note=f"pytest exit status {proc.returncode}")
    run_py_check(ctx)


def run_py_check(ctx: Context) -> None:
    """The Hydra runner end to end on the device (synthetic data, NNN): the carried hydra-core
    and omegaconf, the config tree and the pipeline."""
    import importlib.util

    args = ["debug=tiny", "logger=none", f"device={ctx.device}"]
    what = f"run.py {' '.join(args)}"
    with guarded(ctx, "tests", what, kind="check"), tempfile.TemporaryDirectory() as tmp:
        hydra_at = Path(importlib.util.find_spec("hydra").origin).parents[1]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args,
                               f"hydra.run.dir={tmp}"], cwd=REPO, capture_output=True,
                              text=True, timeout=max(5.0, ctx.time_left() - 5))
        seconds = time.perf_counter() - t0
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)
        done = proc.returncode == 0 and (Path(tmp) / "results.json").is_file()
        objective = next((ln for ln in proc.stdout.splitlines() if ln.startswith("objective")),
                         "")
        note = f"{objective}; hydra from {hydra_at}" if done else \
            f"exit status {proc.returncode}: {one_line(RuntimeError(proc.stderr[-400:]))}"
        ctx.emit("tests", "check", what, OK if done else FAIL, seconds=seconds, note=note)


# -- section: NNN exact bias -----------------------------------------------------------------------
def parity_dir() -> Path | None:
    """The folder holding the authors' nnn-retrieval 1.0.1 (import name ``nnn``), if any."""
    for cand in (os.environ.get("NNN_PARITY_DIR"), GPU_DEPS / "parity" / "nnn_retrieval",
                 REPO / ".parity" / "nnn_retrieval"):
        if cand and (Path(cand) / "nnn" / "nnn_ranker.py").is_file():
            return Path(cand)
    return None


#: the authors' bias kernel alone, on tensors already on the device (their
#: ``NNNRetriever.compute_alignment_means``, which ``NNNRanker`` calls after copying the arrays)
THEIR_KERNEL = """
import json, sys, time
import numpy as np, torch
import nnn
if not hasattr(nnn, "NNNRanker"):
    sys.exit(f"imported {nnn.__file__}, not nnn-retrieval")
from nnn import NNNRetriever
data, k, batch, repeats, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
g = torch.tensor(np.load(data + "/gallery.npy"), device=device)
r = torch.tensor(np.load(data + "/refs.npy"), device=device)
gpu = device != "cpu"
retriever = NNNRetriever(g.shape[1], use_gpu=gpu, gpu_id=0 if gpu else -1)
times = []
for _ in range(repeats + 1):  # the first call warms up
    if gpu: torch.cuda.synchronize()
    t0 = time.perf_counter()
    retriever.compute_alignment_means(g, r, k, batch)  # ends with .cpu(): synchronised
    times.append(time.perf_counter() - t0)
print("THEIR_KERNEL " + json.dumps({"seconds": times[1:], "nnn_file": nnn.__file__}))
"""


def run_theirs(ctx: Context, data: Path, pdir: Path):
    """(their NNNRanker-from-NumPy seconds per round, their bias (n_g,), their kernel seconds)."""
    sizes = ctx.sizes
    env = {**os.environ, "PYTHONPATH": str(pdir), "TQDM_DISABLE": "1"}
    gpu_id = "0" if ctx.cuda else "-1"
    out = data / "theirs"
    subprocess.run([sys.executable, str(BENCH / "run_nnn_retrieval.py"), "--data", str(data),
                    "--out", str(out), "--k", str(sizes.k), "--alpha", str(ALPHA),
                    "--batch-size", str(THEIR_BATCH), "--gpu-id", gpu_id,
                    "--repeats", str(sizes.repeats + 1)],
                   cwd=data, env=env, check=True, timeout=max(5.0, ctx.time_left() - 10))
    info = json.loads((out / "run0" / "info.json").read_text())
    import numpy as np
    bias = np.load(out / "run0" / "bias.npy")
    proc = subprocess.run([sys.executable, "-c", THEIR_KERNEL, str(data), str(sizes.k),
                           str(THEIR_BATCH), str(sizes.repeats), "cuda:0" if ctx.cuda else "cpu"],
                          cwd=data, env=env, check=True, capture_output=True, text=True,
                          timeout=max(5.0, ctx.time_left() - 5))
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("THEIR_KERNEL "))
    kernel = json.loads(line.split(" ", 1)[1])["seconds"]
    return info["seconds"][1:], bias, kernel  # their first construction initialises CUDA


def scratch_dir(nbytes: int) -> str | None:
    """/dev/shm when it is writable with room for ``nbytes`` (the arrays written for the
    authors' subprocess), else the default temporary folder."""
    import shutil

    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) \
            and shutil.disk_usage(shm).free > 1.5 * nbytes:
        return shm
    return None


def fmt_rounds(rounds) -> str:
    return " ".join(f"{t:.4f}" if t < 1 else f"{t:.2f}" for t in rounds)


def section_nnn(ctx: Context) -> None:
    import numpy as np
    import torch
    from bench_nnn_bias import gemm_floor, reference_bias, unit_data

    from nnn.methods import NNN
    from nnn.methods._exact import DTYPES, LOW_PRECISION, exact_topk

    s, sec = ctx.sizes, "nnn"
    dev = torch.device(ctx.device)
    shape = f"{s.n_gallery} x {s.n_refs} x {s.dim}, k={s.k}"
    gen = torch.Generator().manual_seed(0)
    gallery, refs = unit_data(s.n_gallery, s.dim, gen), unit_data(s.n_refs, s.dim, gen)
    check = np.sort(np.random.default_rng(0).choice(s.n_gallery, min(s.check_rows, s.n_gallery),
                                                    replace=False))
    t0 = time.perf_counter()
    want = reference_bias(gallery[check], refs, s.k, ALPHA)
    print(f"float64 reference on {len(check)} rows: {time.perf_counter() - t0:.1f} s", flush=True)
    variants = [v for v in NNN_VARIANTS if ctx.cuda or not v.get("cuda_only")]
    for v in NNN_VARIANTS:
        if v not in variants:
            ctx.emit(sec, "check", f"bias error, {v['name']}", SKIP, note="needs CUDA")

    # theirs first: its arrays go to disk for the subprocess, and its bias is checked like ours
    theirs = None
    pdir = parity_dir() if ctx.theirs else None
    if ctx.theirs and pdir is None:
        ctx.emit(sec, "time", "theirs: nnn-retrieval 1.0.1", ERROR,
                 note="not found: run bash benchmarks/gpu_deps.sh and carry .gpu_deps")
    elif pdir is not None:
        with guarded(ctx, sec, "theirs: nnn-retrieval 1.0.1"), \
                tempfile.TemporaryDirectory(
                    dir=scratch_dir(gallery.nbytes + refs.nbytes)) as tmp:
            np.save(Path(tmp) / "gallery.npy", gallery)
            np.save(Path(tmp) / "refs.npy", refs)
            ranker_s, their_bias, kernel_s = run_theirs(ctx, Path(tmp), pdir)
            err = float(np.abs(their_bias[check] - want).max())
            ctx.emit(sec, "check", "bias error, theirs (nnn-retrieval, float32)",
                     status_for(err, 1e-5), error=err, bound=1e-5)
            theirs = {"kernel": min(kernel_s), "fit": min(ranker_s)}
            ctx.emit(sec, "time", f"theirs: kernel on device tensors ({shape})",
                     seconds=min(kernel_s), rounds=fmt_rounds(kernel_s),
                     note=f"NNNRetriever.compute_alignment_means, batch {THEIR_BATCH}")
            ctx.emit(sec, "time", "theirs: NNNRanker from NumPy", seconds=min(ranker_s),
                     rounds=fmt_rounds(ranker_s), note="includes their host-to-device copy")

    x32, r32 = (torch.from_numpy(a).to(dev) for a in (gallery, refs))
    for route in LOW_PRECISION:
        with guarded(ctx, sec, f"{route} GEMM within the pre-selection's bound", kind="check"):
            ratio, worst = gemm_bound_check(x32[:GEMM_CHECK_ROWS], r32, route)
            ctx.emit(sec, "check", f"{route} GEMM within the pre-selection's bound "
                     f"({GEMM_CHECK_ROWS} rows x {s.n_refs})", status_for(ratio, 1.0),
                     error=ratio, bound=1.0, note=f"largest |S^ - A| / bound; {worst}")
    for v in variants:
        name, opts = v["name"], dict(v["nnn"])
        precision = "high" if v["tf32"] else "highest"
        if ctx.time_left() < 10:
            ctx.emit(sec, "time", f"ours: {name}", SKIP, note="section time limit near")
            continue
        torch.set_float32_matmul_precision(precision)
        try:
            dt = DTYPES[opts.get("dtype", "float32")]
            budget = opts.get("memory_budget_mb", 512.0)
            xt, rt = x32.to(dt), r32.to(dt)
            kernel = v.get("kernel") or (lambda x, r, k, o: exact_topk(
                x, r, k, memory_budget_mb=o.get("memory_budget_mb", 512.0),
                ref_batch_size=o.get("ref_batch_size"), progress=False,
                route=o.get("precision", "float32")))
            with guarded(ctx, sec, f"ours: {name}, kernel"):
                best, rounds, peak, top = measure(lambda: kernel(xt, rt, s.k, opts), dev,
                                                  s.repeats)
                got = ALPHA * top[torch.from_numpy(check).to(dev), :s.k].double().mean(1)
                err = float(np.abs(got.cpu().numpy() - want).max())
                ctx.emit(sec, "check", f"bias error, {name} (kernel)", status_for(err, v["bound"]),
                         error=err, bound=v["bound"])
                note = ""
                if theirs:
                    ratio = theirs["kernel"] / best
                    note = (f"theirs/ours {ratio:.2f}x; target <= {TARGET_S} s and >= "
                            f"{TARGET_SPEEDUP:g}x: {'met' if best <= TARGET_S and ratio >= TARGET_SPEEDUP else 'not met'}")
                ctx.emit(sec, "time", f"ours: {name}, kernel on device tensors ({shape})",
                         seconds=best, rounds=fmt_rounds(rounds), peak_mib=peak, note=note)
            with guarded(ctx, sec, f"ours: {name}, GEMM floor"):
                rows = max(1, min(s.n_gallery, int(budget * MiB // (s.n_refs * xt.element_size()))))
                best, rounds, peak, _ = measure(lambda: gemm_floor(xt, rt, rows), dev, s.repeats)
                ctx.emit(sec, "time", f"ours: {name}, GEMM floor (bare matmul, same blocks)",
                         seconds=best, rounds=fmt_rounds(rounds), peak_mib=peak)
            xt = rt = None  # frees the device copies (the lambdas above are done with them)
            with guarded(ctx, sec, f"ours: {name}, NNN.fit"):
                model = NNN(k=s.k, alpha=ALPHA, device=ctx.device, progress=False, **opts)
                best, rounds, peak, _ = measure(lambda: model.fit(gallery, query_bank=refs), dev,
                                                s.repeats)
                err = float(np.abs(model.bias_[check].astype(np.float64) - want).max())
                ctx.emit(sec, "check", f"bias error, {name} (NNN.fit)",
                         status_for(err, v["bound"]), error=err, bound=v["bound"])
                note = f"theirs/ours {theirs['fit'] / best:.2f}x (both from NumPy)" if theirs else ""
                ctx.emit(sec, "time", f"ours: {name}, NNN.fit from NumPy", seconds=best,
                         rounds=fmt_rounds(rounds), peak_mib=peak, note=note)
        finally:
            torch.set_float32_matmul_precision("highest")
            if ctx.cuda:
                torch.cuda.empty_cache()


def gemm_bound_check(x, refs, route: str) -> tuple[float, str]:
    """The low-precision GEMM of ``route`` on this device against the bound that the exact
    pre-selection assumes (``nnn.methods._exact.LowPrecisionBlocks``, with ``_rounding`` of the
    device): for x~, r~ the inputs rounded to the low precision, A = x~ r~^T in float64 and S^
    the GEMM's result in the low precision (run as the route runs it, inside ``_ieee_gemms``),
    |S^ - A| <= u' |A| (1 + u') + (1 + u') gamma'_d |x~| |r~| + eta + d 2^-126 (u' = the
    result's unit roundoff times the device's factor, gamma'_d from the accumulation's).
    Returns (the largest ratio of |S^ - A| to that bound, where it is largest)."""
    from nnn.methods._exact import LOW_PRECISION, _ieee_gemms, _rounding

    low, u, eta = LOW_PRECISION[route]
    u_acc, factor = _rounding(x.device)
    u_out, d = u * factor, x.shape[1]
    gamma = d * u_acc / (1 - d * u_acc)
    x_low, refs_low = x.to(low), refs.to(low)
    with _ieee_gemms():
        got = (x_low @ refs_low.T).double()
    exact = x_low.double() @ refs_low.double().T
    norms = x_low.double().norm(dim=1)[:, None] * refs_low.double().norm(dim=1)[None]
    bound = (u_out * exact.abs() * (1 + u_out) + (1 + u_out) * gamma * norms + eta
             + d * 2.0**-126)
    ratio = (got - exact).abs() / bound
    worst = int(ratio.argmax())
    i, j = divmod(worst, ratio.shape[1])
    return float(ratio.max()), (f"at row {i}, reference {j}: |S^ - A| = "
                                f"{float((got - exact).abs()[i, j]):.3g}, |A| = "
                                f"{float(exact[i, j]):.3g}; u_acc = {u_acc:.3g}, u' = {u_out:.3g}")


# -- section: QB-Norm / DBNorm ---------------------------------------------------------------------
def _bank_methods(betas_grid: tuple):
    """(name, class, keyword arguments, banks needed) of the two bank methods."""
    from nnn.methods import DBNorm, QBNorm

    return (("QBNorm", QBNorm, dict(beta=BETA, beta_grid=betas_grid, dynamic=True),
             ("query_bank",)),
            ("DBNorm", DBNorm, dict(beta_query=BETA, beta_gallery=BETA,
                                    beta_query_grid=betas_grid, beta_gallery_grid=betas_grid,
                                    dynamic=True), ("query_bank", "gallery_bank")))


def _grid_params(name: str, grid: tuple) -> list[dict]:
    """The with_params settings of a tuning grid: each beta (QBNorm), each pair (DBNorm)."""
    if name == "QBNorm":
        return [dict(beta=b) for b in grid]
    return [dict(beta_query=a, beta_gallery=b) for a in grid for b in grid]


def section_bank(ctx: Context) -> None:
    import numpy as np
    import torch
    from bench_bank_memory import reference_log_norm, unit_rows

    s, sec = ctx.sizes, "bank"
    dev = torch.device(ctx.device)
    # the device's results against the CPU's on a small case (rows that cross chunk boundaries)
    small = BANK_SMALL
    rng = np.random.default_rng(1)
    offset = rng.standard_normal(small["dim"]) * 0.3
    g = unit_rows(small["n_gallery"], small["dim"], offset, seed=2)
    banks = {"query_bank": unit_rows(small["bank"], small["dim"], offset, seed=3),
             "gallery_bank": unit_rows(small["gallery_bank"], small["dim"], offset, seed=4)}
    q = unit_rows(97, small["dim"], offset, seed=5)
    for name, cls, kw, needs in _bank_methods((5.0, 50.0)):
        with guarded(ctx, sec, f"{name} {ctx.device} vs cpu, small case", kind="check"):
            fits = [cls(device=d, memory_budget_mb=0.25, progress=False, **kw).fit(
                g, **{b: banks[b] for b in needs}) for d in ("cpu", ctx.device)]
            err, bound, same_ids, same_act = 0.0, 2e-6 * 50.0, True, True
            other = dict(beta=50.0) if name == "QBNorm" else dict(beta_query=50.0,
                                                                  beta_gallery=5.0)
            for params in (None, other):  # the fitted beta, then one of the grid
                a, b = (m.with_params(**params) if params else m for m in fits)
                for side in ("query", "gallery"):
                    if getattr(a, f"log_norm_{side}_", None) is not None:
                        err = max(err, float(np.abs(getattr(a, f"log_norm_{side}_")
                                                    - getattr(b, f"log_norm_{side}_")).max()))
                        same_act &= np.array_equal(getattr(a, f"activation_{side}_"),
                                                   getattr(b, f"activation_{side}_"))
                same_ids &= np.array_equal(a.search(q, 5)[1], b.search(q, 5)[1])
            status = status_for(err, bound) if same_ids and same_act else FAIL
            ctx.emit(sec, "check", f"{name} {ctx.device} vs cpu, small case (log-normaliser)",
                     status, error=err, bound=bound,
                     note=f"top-5 ids equal: {same_ids}, activation sets equal: {same_act}")

    # full size: fit, beta grid, peak GPU memory, float64 check on sampled gallery items
    if ctx.time_left() < 15:
        ctx.emit(sec, "time", "full size", SKIP, note="section time limit near")
        return
    rng = np.random.default_rng(0)
    text_dir, image_dir = (rng.standard_normal(s.dim) * 0.5 for _ in range(2))
    gallery = unit_rows(s.n_gallery, s.dim, image_dir, seed=1)
    full = {"query_bank": unit_rows(s.bank, s.dim, text_dir, seed=2),
            "gallery_bank": unit_rows(s.gallery_bank, s.dim, image_dir, seed=3)}
    queries = unit_rows(s.n_queries, s.dim, text_dir, seed=4)
    repeats = max(1, min(2, s.repeats))
    for name, cls, kw, needs in _bank_methods(BETA_GRID):
        banks_used = {b: full[b] for b in needs}
        size = ", ".join(f"{b.split('_')[0]} bank {len(full[b]):,}" for b in needs)
        size += f", gallery {s.n_gallery:,}, d={s.dim}"
        one = {k: v for k, v in kw.items() if "grid" not in k}
        with guarded(ctx, sec, f"{name} fit"):
            best, rounds, peak, model = measure(
                lambda: cls(device=ctx.device, progress=False, **one).fit(gallery, **banks_used),
                dev, repeats)
            ctx.emit(sec, "time", f"{name} fit, beta {BETA:g} ({size})", seconds=best,
                     rounds=fmt_rounds(rounds), peak_mib=peak,
                     note="dynamic; memory_budget_mb 256 (default)")
            cols = min(s.check_cols, s.n_gallery)
            for b in needs:
                side = b.split("_")[0]
                want = reference_log_norm(full[b], gallery[:cols], BETA)
                err = float(np.abs(getattr(model, f"log_norm_{side}_")[:cols] - want).max())
                ctx.emit(sec, "check", f"{name} log_norm_{side}_ vs float64 ({cols} items)",
                         status_for(err, LOG_NORM_BOUND), error=err, bound=LOG_NORM_BOUND)
        if ctx.time_left() < 10:
            ctx.emit(sec, "time", f"{name} beta grid", SKIP, note="section time limit near")
            continue
        with guarded(ctx, sec, f"{name} beta grid"):
            grid = _grid_params(name, BETA_GRID)

            def tune():
                m = cls(device=ctx.device, progress=False, **kw).fit(gallery, **banks_used)
                for p in grid:
                    m.with_params(**p).search(queries, 10)

            best, rounds, peak, _ = measure(tune, dev, 1)
            ctx.emit(sec, "time", f"{name} tuning grid: {len(grid)} settings ({size})",
                     seconds=best, rounds=fmt_rounds(rounds), peak_mib=peak,
                     note=f"one fit with the grid, then with_params + search of "
                          f"{s.n_queries:,} queries per setting")
        if ctx.cuda:
            torch.cuda.empty_cache()


# -- section: extraction ---------------------------------------------------------------------------
#: a small open_clip architecture for CPU runs (registered from a temporary folder)
TINY_MODEL = "gpu-check-tiny"


def make_jpegs(folder: Path, n: int, sizes, workers: int):
    """A ``RetrievalSplit`` of n generated JPEGs (sizes cycled), one caption each."""
    from multiprocessing import Pool

    import numpy as np
    from bench_extraction import _write_jpeg

    from nnn.data.base import RetrievalSplit

    paths = [folder / f"{i:06d}.jpg" for i in range(n)]
    jobs = [(p, *sizes[i % len(sizes)], i) for i, p in enumerate(paths)]
    if workers > 1:
        with Pool(workers) as pool:
            nbytes = pool.map(_write_jpeg, jobs, chunksize=8)
    else:
        nbytes = [_write_jpeg(j) for j in jobs]
    captions = [f"a synthetic picture number {i} of a {['cat', 'bus', 'kite'][i % 3]} "
                f"next to {i % 7} people on a sunny day" for i in range(n)]
    split = RetrievalSplit("gpu_check", [str(i) for i in range(n)], paths, captions,
                           np.arange(n, dtype=np.int64))
    return split, float(np.mean(nbytes))


def section_extract(ctx: Context) -> None:
    import numpy as np
    import torch
    from bench_extraction import TINY, forward_only, loader_rate
    from PIL import Image

    from nnn.cache import EmbeddingCache
    from nnn.embed import embed_split
    from nnn.embed.batches import encode_captions
    from nnn.encoders.open_clip import OpenClipEncoder
    from nnn.encoders.torch_model import autocast

    class SeededEncoder(OpenClipEncoder):
        """Draws the same random weights at every load(): Lightning's predict path loads the
        encoder again on its rank, and its output is compared with the one-process run's."""

        def load(self):
            torch.manual_seed(0)
            return super().load()

    s, sec = ctx.sizes, "extract"
    dev = torch.device(ctx.device)
    precision = "fp16" if ctx.cuda else "fp32"
    batch, workers = s.batch, ctx.workers
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "jpeg").mkdir()
        t0 = time.perf_counter()
        split, mean_bytes = make_jpegs(tmp / "jpeg", s.n_images, s.image_sizes, max(1, workers))
        print(f"generated {s.n_images} JPEGs in {time.perf_counter() - t0:.1f} s, mean "
              f"{mean_bytes / 1e3:.0f} kB", flush=True)
        (tmp / "configs").mkdir()
        (tmp / "configs" / f"{TINY_MODEL}.json").write_text(json.dumps(TINY))
        first = None  # (encoder, embed_split result, label) of the first model, for ddp
        for i, model_name in enumerate(s.models):
            name = TINY_MODEL if model_name == "tiny" else model_name
            if ctx.time_left() < 20:
                ctx.emit(sec, "time", f"{name}", SKIP, note="section time limit near")
                continue
            label = f"{name} (random weights, {precision}, batch {batch}, {workers} workers)"
            with guarded(ctx, sec, f"{name}: load"):
                enc = SeededEncoder(model_name=name, pretrained=None, device=ctx.device,
                                    precision=precision, batch_size=batch,
                                    model_config_dir=str(tmp / "configs")).load()
                size = int(enc.image_transform(Image.new("RGB", (64, 48))).shape[-1])
                fwd = es = None
                with guarded(ctx, sec, f"{name}: images"):
                    fwd = forward_only(enc, dev, s.n_images, batch, size)
                    ctx.emit(sec, "time", f"{label}: images, forward only", rate=fwd,
                             unit="img/s", note=f"{size}x{size} input, batch on device")
                    sends = "uint8" if enc.uint8_image_preprocessor() else "float32"
                    for what, draft in (("pipeline (decode in workers + forward)", None),
                                        (f"pipeline, jpeg_draft={size}", size)):
                        rate = loader_rate(enc, split, dev, batch, workers, draft, True)
                        ctx.emit(sec, "time", f"{label}: images, {what}", rate=rate,
                                 unit="img/s", note=f"{100 * rate / fwd:.1f} % of forward only "
                                                    f"(target >= 80 %); workers send {sends} "
                                                    "pixels")
                with guarded(ctx, sec, f"{name}: embed_split"):
                    t0 = time.perf_counter()
                    es = embed_split(enc, split, EmbeddingCache(tmp / f"cache{i}"),
                                     identity={"gpu_check": name}, batch_size=batch,
                                     num_workers=workers, device=dev, progress=False)
                    wall = time.perf_counter() - t0
                    rate = s.n_images / wall
                    note = (f"{100 * rate / fwd:.1f} % of forward only; " if fwd else "") + \
                        "wall clock: workers' start, shards, captions, cache store"
                    ctx.emit(sec, "time", f"{label}: embed_split into a cache, images + captions",
                             seconds=wall, rate=rate, unit="img/s", note=note)
                    norms = np.linalg.norm(es.image, axis=1)
                    err = float(np.abs(norms - 1).max())
                    ok = es.image.ndim == 2 and len(es.image) == s.n_images and \
                        len(es.text) == split.n_captions and np.isfinite(es.image).all()
                    ctx.emit(sec, "check", f"{name}: embed_split output (shape, finite, unit rows)",
                             status_for(err, 1e-3) if ok else FAIL, error=err, bound=1e-3,
                             note=f"image {es.image.shape}, text {es.text.shape}")
                with guarded(ctx, sec, f"{name}: texts"):
                    tokens = enc._tokenizer(split.captions[:batch]).to(dev)  # noqa: SLF001

                    def text_forward():  # the bare text tower on pre-tokenised captions
                        with torch.inference_mode(), autocast(dev, enc.precision):
                            enc._model.encode_text(tokens)  # noqa: SLF001
                    steps = max(3, math.ceil(s.n_images / batch))
                    best, rounds, _, _ = measure(lambda: [text_forward() for _ in range(steps)],
                                                 dev, 1)
                    tfwd = steps * len(tokens) / best
                    ctx.emit(sec, "time", f"{label}: texts, forward only", rate=tfwd,
                             unit="texts/s", note="pre-tokenised batch on device")
                    for where, n_workers in (("in this process", 0),
                                             (f"in {workers} workers", workers)):
                        t0 = time.perf_counter()
                        encode_captions(enc, split.captions, dev, progress=False,
                                        num_workers=n_workers)
                        rate = split.n_captions / (time.perf_counter() - t0)
                        ctx.emit(sec, "time", f"{label}: texts, encode_captions (tokenised "
                                 f"{where}, forward)", rate=rate, unit="texts/s",
                                 note=f"{100 * rate / tfwd:.1f} % of forward only")
                # the first model is kept for the Lightning run, which comes last (it leaves
                # a process group behind)
                if first is None and es is not None:
                    first = (enc, es, label)
                enc = None  # frees the model unless it is kept in first
                if ctx.cuda:
                    torch.cuda.empty_cache()
        if s.ddp_images and first is not None:
            if ctx.time_left() < 20:
                ctx.emit(sec, "time", "Lightning ddp", SKIP, note="section time limit near")
            else:
                with guarded(ctx, sec, "Lightning ddp"):
                    lightning_check(ctx, first[0], split, first[1], tmp / "ddp", first[2])


def lightning_check(ctx: Context, enc, split, single, folder: Path, label: str) -> None:
    """``extract=ddp`` on one device: Lightning's predict path against the one-process result."""
    import numpy as np

    from nnn.cache import EmbeddingCache
    from nnn.data.base import subset_caption_index
    from nnn.embed.lightning import embed_split_lightning

    s, sec = ctx.sizes, "extract"
    rows = np.arange(min(s.ddp_images, split.n_images))
    part = split.subset_images(rows, name="gpu_check/ddp")
    t0 = time.perf_counter()
    es = embed_split_lightning(enc, part, EmbeddingCache(folder), identity={"gpu_check": "ddp"},
                               accelerator="gpu" if ctx.cuda else "cpu", devices=1,
                               strategy="ddp", batch_size=s.batch, num_workers=ctx.workers,
                               progress=False)
    wall = time.perf_counter() - t0
    _, kept, _ = subset_caption_index(split.caption_to_image, split.n_images, rows)
    err = max(float(np.abs(es.image - single.image[rows]).max()),
              float(np.abs(es.text - single.text[kept]).max()))
    bound = 1e-2 if ctx.cuda else 1e-5  # fp16 autocast on the GPU; float32 on the CPU
    ctx.emit(sec, "check", f"Lightning ddp (1 device) vs embed_split, {len(rows)} images and "
             f"{len(kept)} captions", status_for(err, bound), error=err, bound=bound,
             note="nnn.embed.lightning.embed_split_lightning, strategy='ddp', devices=1")
    ctx.emit(sec, "time", f"{label}: Lightning ddp, 1 device, {len(rows)} images",
             seconds=wall, rate=len(rows) / wall, unit="img/s",
             note="wall clock incl. Trainer and process-group setup")


# -- section: FAISS --------------------------------------------------------------------------------
def faiss_wheel_note() -> str:
    """What gpu_deps.sh found out about the faiss-gpu wheel."""
    info_file = GPU_DEPS / "faiss_gpu_wheel.json"
    if not info_file.is_file():
        return f"faiss-gpu wheel size not measured ({info_file} missing: run gpu_deps.sh)"
    info = json.loads(info_file.read_text())
    if not info.get("measured"):
        return f"faiss-gpu wheel not measured: {info.get('reason')}"
    if info.get("carried"):
        return f"{info['wheel']} ({info['mib']} MiB) carried: {info['reason']}"
    return f"{info['wheel']} not carried: {info['reason']}"


def section_faiss(ctx: Context) -> None:
    sec = "faiss"
    try:
        import faiss
    except ImportError as e:
        ctx.emit(sec, "check", "GPU FAISS", "n/a", note=f"faiss not importable ({e}); "
                                                         f"{faiss_wheel_note()}")
        return
    import numpy as np
    import torch
    from bench_faiss_ivf import synthetic_problem, topk_recall

    from nnn.methods import NNN, ReferenceIndex
    from nnn.methods._topk import gpu_faiss_available

    use_gpu = gpu_faiss_available()
    if ctx.cuda and not use_gpu:
        ctx.emit(sec, "check", "GPU FAISS", "n/a",
                 note=f"faiss {faiss.__version__} has no GPU support here; {faiss_wheel_note()}")
        return
    s = ctx.sizes
    where = "GPU FAISS" if use_gpu else f"CPU FAISS {faiss.__version__} (no GPU)"
    gallery, _, refs = synthetic_problem(s.n_gallery, s.faiss_refs, s.dim, seed=0)
    dev = torch.device(ctx.device)
    exact = NNN(k=s.k, alpha=ALPHA, device=ctx.device, progress=False)
    best_exact, rounds, _, _ = measure(lambda: exact.fit(gallery, query_bank=refs), dev,
                                       s.repeats)
    shape = f"{s.n_gallery} x {s.faiss_refs} x {s.dim}, k={s.k}"
    ctx.emit(sec, "time", f"exact NNN.fit, {ctx.device} ({shape})", seconds=best_exact,
             rounds=fmt_rounds(rounds))
    for kind in ("ivf", "ivf_fp16"):
        with guarded(ctx, sec, f"{where} {kind}"):
            t0 = time.perf_counter()
            index = ReferenceIndex(refs, index=kind, use_gpu_faiss=use_gpu)
            build = time.perf_counter() - t0
            model = NNN(k=s.k, alpha=ALPHA, backend="faiss", device=ctx.device, progress=False)
            best, rounds, peak, _ = measure(lambda: model.fit(gallery, query_bank=index), dev,
                                            s.repeats)
            err = np.abs(model.bias_ - exact.bias_)
            recall = topk_recall(model.topk_sims_, exact.topk_sims_)
            ctx.emit(sec, "check", f"{where} {kind} bias vs exact (approximate: no bound)", OK,
                     error=float(err.max()),
                     note=f"mean {err.mean():.2e}, top-k recall {recall:.3f}")
            ctx.emit(sec, "time", f"{where} {kind}: NNN.fit with a prebuilt index ({shape})",
                     seconds=best, rounds=fmt_rounds(rounds), peak_mib=peak,
                     note=f"build {build:.2f} s (once), nlist {index.nlist}; "
                          f"{best_exact / best:.1f}x exact")


SECTION_FUNCS = {"tests": section_tests, "nnn": section_nnn, "bank": section_bank,
                 "extract": section_extract, "faiss": section_faiss}


# -- the runner ------------------------------------------------------------------------------------
def environment() -> dict:
    import torch
    from machine import cpu_info

    cpu = cpu_info()

    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "python": sys.version.split()[0], "torch": torch.__version__,
           "cuda": torch.version.cuda, "cpus": os.cpu_count(), "machine": platform.machine(),
           "cpu": f"{cpu['model']} (family {cpu['family']} model {cpu['model_number']})",
           "cpu_flags": " ".join(cpu["flags"])}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_mib"] = torch.cuda.get_device_properties(0).total_memory // MiB
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                       capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["commit"] = ""
    with contextlib.suppress(OSError):
        env["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return env


def run_section(name: str, args, limit: float, log) -> list[dict]:
    """Run one section in a subprocess (its own process group), killed after ``limit`` s."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as f:
        rows_file = Path(f.name)
    cmd = [sys.executable, __file__, "--child", name, "--rows-file", str(rows_file),
           "--child-limit", str(limit), *args.forward]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=REPO)

    def copy_output():
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if args.verbose:
                print(f"  [{name}] {line}", end="", flush=True)

    reader = threading.Thread(target=copy_output, daemon=True)
    reader.start()
    problem = None
    try:
        rc = proc.wait(timeout=limit)
        if rc != 0:
            problem = f"section exited with status {rc} (see log.txt)"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the section and its DataLoader workers
        proc.wait()
        problem = f"killed at its time limit of {limit:.0f} s (see log.txt)"
    reader.join(timeout=5)
    rows = [json.loads(ln) for ln in rows_file.read_text().splitlines() if ln.strip()]
    rows_file.unlink(missing_ok=True)
    if problem:
        rows.append({"section": name, "kind": "check", "what": f"section {name}",
                     "status": ERROR, "note": problem})
    print(f"[{name}] {time.monotonic() - t0:.1f} s, {len(rows)} rows"
          + (f", {problem}" if problem else ""), flush=True)
    for r in rows:
        if r["status"] in (FAIL, ERROR):
            print(f"  {r['status']}: {r['what']}: {r.get('note', '')}", flush=True)
    return rows


def fmt(v, digits: int = 3) -> str:
    """A table cell: small numbers in e-notation, others with ``digits`` significant digits."""
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    a = abs(v)
    if a == 0:
        return "0"
    if a < 1e-2:
        return f"{v:.2e}"
    return f"{v:.{digits}g}" if a < 100 else f"{v:,.0f}"


def markdown(env: dict, rows: list[dict], args) -> str:
    head = (f"GPU check ({args.preset}, device {args.device}) — {env['date']}; "
            f"{env.get('gpu', 'no GPU')}; Python {env['python']}, torch {env['torch']} "
            f"(CUDA {env['cuda']}), {env['cpus']} CPUs ({env.get('cpu', '?')}; "
            f"{env.get('cpu_flags', '')}), load {env.get('load', '?')}, "
            f"commit {env.get('commit') or '?'}")
    lines = [head, "", "Correctness (device results against float64 / the CPU)", "",
             "| section | check | status | max abs error | bound | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "check":
            lines.append(f"| {r['section']} | {r['what']} | {r['status']} | {fmt(r.get('error'))} "
                         f"| {fmt(r.get('bound'))} | {r.get('note', '')} |")
    lines += ["", "Timings (best of the rounds listed)", "",
              "| section | what | status | best s | rounds s | rate | peak GPU MiB | note |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "time":
            rate = f"{fmt(r.get('rate'))} {r.get('unit', '')}".strip()
            lines.append(f"| {r['section']} | {r['what']} | {r['status']} | "
                         f"{fmt(r.get('seconds'), 4)} | {r.get('rounds', '')} | {rate} | "
                         f"{fmt(r.get('peak_mib'))} "
                         f"| {r.get('note', '')} |")
    bad = sum(r["status"] in (FAIL, ERROR) for r in rows)
    lines += ["", f"{len(rows)} rows, {bad} FAIL/ERROR; wall {args.wall:.0f} s "
                  f"(budget {args.budget_s:.0f} s)"]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_const", dest="preset", const="small",
                      help="small sizes: a CPU dry run in minutes")
    size.add_argument("--tiny", action="store_const", dest="preset", const="tiny",
                      help="tiny sizes: seconds (the tests)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="wall-clock budget of all sections together (default 450 s)")
    ap.add_argument("--limit", action="append", default=[], metavar="SECTION=SECONDS",
                    help="override one section's time limit")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader / JPEG workers (default: CPUs - 1, at most 15; 1 for "
                         "--small and --tiny)")
    ap.add_argument("--no-theirs", action="store_true", help="skip the authors' nnn-retrieval")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: $OUT when set, else outputs/gpu_check)")
    ap.add_argument("--verbose", action="store_true", help="echo the sections' output")
    ap.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument("--rows-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-limit", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.preset = args.preset or "full"
    args.sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    limits = dict(PRESETS[args.preset].limits)
    for item in args.limit:
        sec, _, secs = item.partition("=")
        if sec not in SECTIONS:
            ap.error(f"--limit {item!r}: unknown section {sec!r}; use SECTION=SECONDS")
        limits[sec] = float(secs)
    args.limits = limits
    if args.workers is None:
        args.workers = 1 if args.preset != "full" else max(1, min(15, (os.cpu_count() or 2) - 1))
    args.out = args.out or Path(os.environ.get("OUT") or REPO / "outputs" / "gpu_check")
    # what a section's subprocess is given
    args.forward = ["--device", args.device, f"--{args.preset}" if args.preset != "full" else "",
                    "--workers", str(args.workers), "--out", str(args.out)]
    args.forward = [a for a in args.forward if a] + (["--no-theirs"] if args.no_theirs else [])
    return args


def child_main(args) -> int:
    ctx = Context(device=args.device, sizes=PRESETS[args.preset], out=args.out,
                  deadline=time.monotonic() + args.child_limit, theirs=not args.no_theirs,
                  workers=args.workers, rows_file=args.rows_file)
    try:
        SECTION_FUNCS[args.child](ctx)
    except Exception as e:  # reported as a row; the parent goes on with the next section
        traceback.print_exc()
        ctx.emit(args.child, "check", f"section {args.child}", ERROR, note=one_line(e))
    return 0


def write_results(args, env: dict, rows: list[dict], wall: float) -> str:
    """Write table.md and results.json to ``args.out``; returns the table."""
    args.wall = wall
    table = markdown(env, rows, args)
    (args.out / "table.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps(
        {"environment": env, "preset": args.preset, "device": args.device,
         "sizes": asdict(PRESETS[args.preset]), "rows": rows, "wall_s": wall},
        indent=1, default=float))
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    if sys.version_info < (3, 10):
        sys.exit(f"gpu_check: Python {platform.python_version()} is too old; nnn needs >= 3.10")
    if args.child:
        return child_main(args)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda but torch sees no CUDA device "
                 f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run with "
                 "--device cpu --small for a dry run")
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(f"gpu_check: preset {args.preset}, device {args.device}, sections "
          f"{','.join(args.sections)}, budget {args.budget_s:.0f} s, out {args.out}\n"
          f"  {json.dumps(env)}", flush=True)
    start = time.monotonic()
    rows = []
    with open(args.out / "log.txt", "w") as log:
        for name in args.sections:
            left = args.budget_s - (time.monotonic() - start)
            limit = min(args.limits[name], left)
            if left < 5:
                rows.append({"section": name, "kind": "check", "what": f"section {name}",
                             "status": SKIP, "note": "the global time budget is spent"})
                continue
            log.write(f"==== section {name} (limit {limit:.0f} s)\n")
            log.flush()
            rows += run_section(name, args, limit, log)
            # written after every section: a run stopped from outside keeps what it finished
            write_results(args, env, rows, time.monotonic() - start)
    table = write_results(args, env, rows, time.monotonic() - start)
    print("\n" + table, flush=True)
    return 1 if any(r["status"] in (FAIL, ERROR) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
