"""A saved NNN index at 1,000,000 x 512: sharded build on Hydra's joblib launcher, merge, and
queries/s at top-10 against plain FAISS (no NNN) and ``NNN.search``, with peak memory.

Data (synthetic, seeded, float32 unit rows, written memory-mapped in chunks under ``--dir``):
gallery ``--n`` x ``--d`` (default 1,000,000 x 512, 2.05 GB), ``--n-refs`` reference queries
(default 20,000) and ``--n-queries`` queries (default 1,000), all standard normal directions.
NNN k = ``--k`` (16), alpha = 0.75.

Steps, each timed (wall) with the peak resident memory of its process tree (sampled every 0.2 s
with psutil, summed over the processes; "anon" leaves out file pages mapped from the gallery,
which the kernel can drop and re-read):

1. ``nnn-index shards`` (``python -m nnn.index_cli``) on ``hydra/launcher=joblib``:
   ``--shards`` shards, ``--jobs`` worker processes, ``--threads`` torch threads each;
2. ``nnn-index merge``: every shard checked (its gallery rows re-hashed), the folded flat index
   built and saved;
3. in this process: the saved index loaded; plain FAISS ``IndexFlatIP`` over the gallery (no
   NNN); ``NNN(k).fit(gallery, query_bank=refs)`` one-shot (its items/s is the one-process
   build to compare the shards with, and its biases are checked against the merged ones);
4. queries/s at top-10, rounds interleaved (``--rounds``, best quoted): (a) the folded index's
   ``search`` (input check and [q, 1] included), (b) plain FAISS ``search`` over g, (c)
   ``NNN.search`` (torch, ``batch_size`` 1,024); all queries in one call, and ``--single``
   queries one at a time for (a) and (b). Overhead = time(a) / time(b) - 1 (target <= 5 %);
5. the same overhead from ``--pairs`` back-to-back calls of ``--pair-queries`` queries, in wall
   and CPU time (much less disturbed by other processes, especially with ``--query-threads 1``),
   at each ``--blas-thresholds`` value; ``--also-unaligned`` adds (a1), the same folded vectors
   built in this process (``NNNIndex.from_biases(align=1)``). Each pair ratio's median comes with
   a 95 % bootstrap interval over the pairs.

``--huge-pages`` puts the vectors of both (a) and (b) in transparent huge pages before searching
(``madvise(MADV_COLLAPSE)``, Linux >= 6.1): with 4 KiB pages the same vectors scanned 11-25 %
apart depending only on how their buffer was allocated (``read_index`` vs ``add``), which
hid the NNN overhead; this makes both placements alike.

    nice .venv/bin/python benchmarks/bench_index.py [--dir /tmp/nnn_bench_index] [--keep]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from machine import cpu_info  # benchmarks/ is on sys.path when this script runs

REPO = Path(__file__).resolve().parents[1]


class PeakMemory:
    """Peak summed RSS (and RSS less shared file pages) of a process and its descendants."""

    def __init__(self, pid: int | None = None, every: float = 0.2):
        self.root = psutil.Process(pid or os.getpid())
        self.every, self.rss, self.anon = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss = anon = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                m = p.memory_info()
            except psutil.NoSuchProcess:
                continue
            rss += m.rss
            anon += m.rss - m.shared
        self.rss, self.anon = max(self.rss, rss), max(self.anon, anon)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        return False


def gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB"


def write_unit(path: Path, n: int, d: int, seed: int, chunk: int = 65536) -> None:
    """(n, d) float32 unit rows into a .npy file, chunk by chunk through a memory map."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (n, d):
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + len(x)] = x
    out.flush()
    del out


def run_cli(args: list[str], env) -> tuple[float, PeakMemory, str]:
    """``python -m nnn.index_cli --quiet ARGS`` timed, with the peak memory of its tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nnn.index_cli", "--quiet", *args], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakMemory(proc.pid) as mem:
        out, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"nnn-index {args[0]} failed:\n{out[-4000:]}")
    return seconds, mem, out


def machine() -> str:
    """CPU model (family/model), CPUs, RAM and the CPU's GEMM flags (``machine.cpu_info``)."""
    cpu = cpu_info()
    return (f"{cpu['model']} (family {cpu['family']} model {cpu['model_number']}); "
            f"{os.cpu_count()} CPUs; {gib(psutil.virtual_memory().total)} RAM; "
            f"{' '.join(cpu['flags'])}")


MADV_COLLAPSE = 25  # linux/mman.h


def collapse_to_huge_pages(faiss_index) -> str:
    """Back a flat FAISS index's vectors with transparent huge pages (``MADV_COLLAPSE``, a
    synchronous copy); returns what happened, for the log."""
    import ctypes

    import faiss

    vectors = faiss.rev_swig_ptr(faiss_index.get_xb(), faiss_index.ntotal * faiss_index.d)
    start = -(-vectors.ctypes.data // 4096) * 4096
    stop = (vectors.ctypes.data + vectors.nbytes) // 4096 * 4096
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    t0 = time.perf_counter()
    failed = libc.madvise(start, stop - start, MADV_COLLAPSE)
    took = time.perf_counter() - t0
    return (f"MADV_COLLAPSE failed: {os.strerror(ctypes.get_errno())}" if failed
            else f"collapsed {gib(stop - start)} in {took:.1f} s")


def median_ci(ratios, seed: int = 0) -> list[float]:
    """The median of ``ratios`` and its 95 % bootstrap interval (10,000 resamples)."""
    r = np.asarray(ratios)
    boot = np.median(np.random.default_rng(seed).choice(r, (10_000, len(r))), axis=1)
    return [float(np.median(r)), *map(float, np.percentile(boot, [2.5, 97.5]))]


def anon_huge_pages() -> str:
    with open("/proc/self/smaps_rollup") as f:
        return next((line.split(":")[1].strip() for line in f if "AnonHugePages" in line), "?")


def timed(fn, rounds: list, i: int) -> None:
    t0 = time.perf_counter()
    fn()
    rounds[i].append(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/nnn_bench_index"))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--n-refs", type=int, default=20_000)
    ap.add_argument("--n-queries", type=int, default=1_000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per shard job")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--single", type=int, default=20, help="queries searched one at a time")
    ap.add_argument("--pairs", type=int, default=15,
                    help="back-to-back (a)/(b) pairs of --pair-queries queries for the ratio")
    ap.add_argument("--pair-queries", type=int, default=200)
    ap.add_argument("--blas-thresholds", default="default",
                    help="comma list of faiss.cvar.distance_compute_blas_threshold values for "
                         "the pairs ('default': FAISS's own); FAISS scans without BLAS below it")
    ap.add_argument("--query-threads", type=int, default=None,
                    help="FAISS/torch threads for the queries (default: all cores); 1 is far "
                         "less disturbed by other processes on a shared machine")
    ap.add_argument("--also-unaligned", action="store_true",
                    help="also time a folded index of exactly d + 1 floats per row (align=1)")
    ap.add_argument("--skip-nnn", action="store_true", help="no NNN.fit / NNN.search")
    ap.add_argument("--query-only", action="store_true",
                    help="reuse the data and index a --keep run left in --dir (no build)")
    ap.add_argument("--keep", action="store_true", help="keep --dir afterwards")
    ap.add_argument("--huge-pages", action="store_true",
                    help="back (a) and (b) with huge pages before searching (module doc)")
    args = ap.parse_args()

    import faiss
    import torch

    work = args.dir
    work.mkdir(parents=True, exist_ok=True)
    g_path, r_path, q_path = work / "g.npy", work / "r.npy", work / "q.npy"
    t0 = time.perf_counter()
    write_unit(g_path, args.n, args.d, 0)
    write_unit(r_path, args.n_refs, args.d, 1)
    write_unit(q_path, args.n_queries, args.d, 2)
    print(f"data: {time.perf_counter() - t0:.1f} s", flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    if not args.query_only:
        for old in ("sh", "ix"):
            shutil.rmtree(work / old, ignore_errors=True)
    res = {"machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="minutes"), "args": {k: str(v) for k, v in vars(args).items()},
        "load_avg_start": os.getloadavg(), "torch": torch.__version__, "faiss": faiss.__version__}

    if not args.query_only:
        res["build"] = build(args, work, g_path, r_path, env)
    query(args, work, g_path, r_path, q_path, res)
    res["load_avg_end"] = os.getloadavg()
    print(json.dumps(res, indent=2))
    name = "results_query.json" if args.query_only else "results.json"
    (work / name).write_text(json.dumps(res, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def build(args, work: Path, g_path: Path, r_path: Path, env) -> dict:
    """Steps 1 and 2: the shards on joblib, then the merge (module doc)."""
    s_sec, s_mem, _ = run_cli(["shards", "--gallery", str(g_path), "--refs", str(r_path),
                               "--num-shards", str(args.shards), "--out", str(work / "sh"),
                               "--k", str(args.k), "--launcher", "joblib",
                               "--jobs", str(args.jobs), "--threads", str(args.threads)], env)
    print(f"shards: {s_sec:.1f} s, {args.n / s_sec:,.0f} items/s, peak {gib(s_mem.rss)}", flush=True)
    m_sec, m_mem, _ = run_cli(["merge", "--shards", str(work / "sh"), "--gallery", str(g_path),
                               "--out", str(work / "ix"), "--kind", "flat"], env)
    print(f"merge: {m_sec:.1f} s, peak {gib(m_mem.rss)}", flush=True)
    return {"shards_s": s_sec, "shards_peak_rss": s_mem.rss, "shards_peak_anon": s_mem.anon,
                    "merge_s": m_sec, "merge_peak_rss": m_mem.rss, "merge_peak_anon": m_mem.anon,
                    "items_per_s_biases": args.n / s_sec,
                    "items_per_s_total": args.n / (s_sec + m_sec),
                    "shard_seconds": [json.loads((work / "sh" / f"shard-{i:05d}-of-{args.shards:05d}"
                                                  ".json").read_text())["seconds"]
                                      for i in range(args.shards)]}


def query(args, work: Path, g_path: Path, r_path: Path, q_path: Path, res: dict) -> None:
    """Steps 3 and 4 (module doc), into ``res``."""
    import faiss

    from nnn.index import NNNIndex
    from nnn.methods import NNN

    if args.query_threads:
        import torch

        faiss.omp_set_num_threads(args.query_threads)
        torch.set_num_threads(args.query_threads)
    with PeakMemory() as q_mem:
        index = NNNIndex.load(work / "ix")
        g = np.load(g_path, mmap_mode="r")
        q = np.load(q_path)
        plain = faiss.IndexFlatIP(args.d)
        for s in range(0, args.n, 65536):
            plain.add(np.ascontiguousarray(g[s:s + 65536]))
        if args.huge_pages:
            res["huge_pages"] = {"folded index (a)": collapse_to_huge_pages(index.faiss_index),
                                 "plain FAISS (b)": collapse_to_huge_pages(plain)}
            res["huge_pages"]["AnonHugePages"] = anon_huge_pages()
            print(f"huge pages: {res['huge_pages']}", flush=True)
        model = None
        if not args.skip_nnn:
            refs = np.load(r_path)
            t0 = time.perf_counter()
            model = NNN(k=args.k, alpha=0.75, batch_size=1024, progress=False).fit(
                g, query_bank=refs)
            fit_s = time.perf_counter() - t0
            res["nnn_fit"] = {"seconds": fit_s, "items_per_s": args.n / fit_s,
                              "max_bias_diff_vs_merged": float(np.abs(model.bias_ -
                                                                      index.biases).max())}
            print(f"NNN.fit one-shot: {fit_s:.1f} s, {args.n / fit_s:,.0f} items/s", flush=True)
        names = ["folded index (a)", "plain FAISS (b)"] + ([] if model is None else
                                                           ["NNN.search (c)"])
        calls = [lambda: index.search(q, 10), lambda: plain.search(q, 10)]
        if model is not None:
            calls.append(lambda: model.search(q, 10))
        batch = [[] for _ in calls]
        single = [[] for _ in range(2)]
        for r in range(args.rounds):
            for i in np.roll(np.arange(len(calls)), -r):  # each call goes first in turn
                timed(calls[i], batch, i)
            one = q[:args.single]
            timed(lambda: [index.search(one[j:j + 1], 10) for j in range(len(one))], single, 0)
            timed(lambda: [plain.search(one[j:j + 1], 10) for j in range(len(one))], single, 1)
            print(f"round {r}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in zip(names, batch)),
                  flush=True)
        variants = {"folded index (a)": index.search, "plain FAISS (b)": plain.search}
        if args.also_unaligned:  # the same folded rows without padding: d + 1 = 513 floats
            unaligned = NNNIndex.from_biases(g_path, index.biases, index.provenance, align=1,
                                             progress=False)
            variants["folded, unpadded (a1)"] = unaligned.search
            res["unaligned_width"] = unaligned.width
        res["folded_width"] = index.width
        pairs = {}
        default_threshold = faiss.cvar.distance_compute_blas_threshold
        for th in args.blas_thresholds.split(","):
            faiss.cvar.distance_compute_blas_threshold = (default_threshold if th == "default"
                                                          else int(th))
            wall = {name: [] for name in variants}
            cpu = {name: [] for name in variants}
            for p in range(args.pairs):  # back to back, so that all meet the same load
                qp = q[(p * args.pair_queries) % len(q):][:args.pair_queries]
                names_p = list(variants)
                for name in names_p[p % len(names_p):] + names_p[:p % len(names_p)]:
                    t0, c0 = time.perf_counter(), time.process_time()
                    variants[name](qp, 10)
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                print(f"pair {p} threshold {faiss.cvar.distance_compute_blas_threshold}: " +
                      "; ".join(f"{n} {wall[n][-1]:.2f} s, cpu {cpu[n][-1]:.2f} s"
                                for n in variants), flush=True)
            base = "plain FAISS (b)"
            pairs[str(faiss.cvar.distance_compute_blas_threshold)] = {
                "queries": args.pair_queries, "wall_s": wall, "cpu_s": cpu,
                "median_wall_ratio_ci95": {n: median_ci(np.array(wall[n]) / wall[base])
                                           for n in variants},
                "median_cpu_ratio_ci95": {n: median_ci(np.array(cpu[n]) / cpu[base])
                                          for n in variants},
                "total_cpu_ratio": {n: sum(cpu[n]) / sum(cpu[base]) for n in variants},
                "best_queries_per_s": {n: args.pair_queries / min(wall[n]) for n in variants}}
        faiss.cvar.distance_compute_blas_threshold = default_threshold
        a_scores, a_ids = index.search(q, 10)
        if model is not None:
            c_scores, c_ids = model.search(q, 10)
            res["agreement"] = {"ids_equal": float((a_ids == c_ids).mean()),
                                "max_score_diff": float(np.abs(a_scores - c_scores).max())}
    res["query"] = {
        "n_queries": args.n_queries, "top_k": 10, "peak_rss": q_mem.rss, "peak_anon": q_mem.anon,
        "batch": {n: {"best_s": min(t), "rounds_s": t, "queries_per_s": args.n_queries / min(t)}
                  for n, t in zip(names, batch) if t},
        "single": {n: {"best_s": min(t), "rounds_s": t, "queries_per_s": args.single / min(t)}
                   for n, t in zip(names[:2], single) if t},
        "pairs": pairs}
    if args.rounds:
        res["query"].update(overhead_batch=min(batch[0]) / min(batch[1]) - 1,
                            overhead_single=min(single[0]) / min(single[1]) - 1)


if __name__ == "__main__":
    main()
