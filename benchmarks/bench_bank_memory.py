"""Peak extra memory and time of QBNorm / DBNorm ``fit`` at COCO scale, against the GEMM floor
(not a timed test).

Default sizes: query bank 591,753 x 512 (all COCO train captions), gallery 5,000 x 512 (COCO 5k
test images), gallery bank 118,287 x 512 (COCO train images, DBNorm only). The dense
bank x gallery matrix would be 591,753 x 5,000 float32 = 11.8 GB; the target is <= 1 GiB extra.

Each method runs in a fresh subprocess. Inputs are generated there in row blocks (so making them
leaves no high-water mark above their own size); then the resident set size (RSS) is read as the
baseline and ``fit`` runs while a thread samples RSS every 2 ms. Reported: sampled peak - baseline,
and the kernel's high-water mark (ru_maxrss) after fit - baseline, which also sees spikes shorter
than the sampling interval. RSS counts torch and NumPy allocations alike (tracemalloc sees only
NumPy's). Afterwards ``log_norm_query_`` is checked against a float64 log-sum-exp reference on
the first ``--check-cols`` gallery items, and the *GEMM floor* is timed: the bare float32
products bank @ gallery.T of the fit (each bank, in blocks of ``--gemm-rows`` rows into one
reused buffer, same threads), the part of a fit no implementation can skip; ``fit_over_gemm``
= fit_s / gemm_floor_s (target <= 1.5), ``fit_over_gemm_cpu`` the same with process CPU seconds
(less sensitive to other jobs on the machine).

``--baseline-path DIR`` also runs every measurement with ``PYTHONPATH=DIR`` (another checkout,
e.g. the code before a change), alternating with this one round by round (``--rounds``), so
that load from other jobs hits both alike; each line says which (``code``).

    .venv/bin/python benchmarks/bench_bank_memory.py                 # full COCO scale
    .venv/bin/python benchmarks/bench_bank_memory.py --bank 50000    # quick run
    .venv/bin/python benchmarks/bench_bank_memory.py --baseline-path /tmp/before --rounds 2
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time

import numpy as np
import psutil
from _checkouts import add_arguments, checkouts, run_json

MiB = 2**20


def unit_rows(n: int, d: int, offset: np.ndarray, seed: int, block: int = 8192) -> np.ndarray:
    """(n, d) float32 unit rows around ``offset`` (a shared modality direction, as real
    embeddings have), generated block by block into one preallocated array."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, block):
        x = rng.standard_normal((min(block, n - start), d), dtype=np.float32) + offset
        out[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``interval`` seconds and keeps the maximum."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_flag = interval, 0, threading.Event()
        self._proc = psutil.Process()

    def run(self):
        while not self._stop_flag.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_flag.set()
        self.join()
        return self.peak


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reference_log_norm(bank: np.ndarray, gallery: np.ndarray, beta: float, block: int = 32768):
    """float64 log sum_b exp(beta s(b, r)) for each gallery row, streamed over bank blocks."""
    from scipy.special import logsumexp
    g = gallery.astype(np.float64)
    acc = np.full(len(g), -np.inf)
    for start in range(0, len(bank), block):
        s = beta * (bank[start:start + block].astype(np.float64) @ g.T)
        acc = np.logaddexp(acc, logsumexp(s, axis=0))
    return acc


def worker(args) -> dict:
    """Build inputs, measure one fit, return the numbers (runs in a fresh process)."""
    import torch

    from nnn.methods import DBNorm, QBNorm

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    text_dir, image_dir = rng.standard_normal(args.dim), rng.standard_normal(args.dim)
    text_dir *= 0.5 / np.linalg.norm(text_dir) * np.sqrt(args.dim)   # mean cosine ~0.2
    image_dir *= 0.5 / np.linalg.norm(image_dir) * np.sqrt(args.dim)
    gallery = unit_rows(args.gallery, args.dim, image_dir, seed=1)
    query_bank = unit_rows(args.bank, args.dim, text_dir, seed=2)
    banks = {"query_bank": query_bank}
    if args.method == "dbnorm":
        banks["gallery_bank"] = unit_rows(args.gallery_bank, args.dim, image_dir, seed=3)
        model = DBNorm(beta_query=args.beta, beta_gallery=args.beta, dynamic=True,
                       memory_budget_mb=args.memory_budget_mb, progress=False)
    else:
        model = QBNorm(beta=args.beta, dynamic=True, memory_budget_mb=args.memory_budget_mb,
                       progress=False)

    baseline = psutil.Process().memory_info().rss
    hwm_before = max_rss_bytes()
    sampler = RssSampler()
    sampler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(gallery, **banks)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_sampled = sampler.stop()
    hwm_after = max_rss_bytes()

    result = {
        "method": args.method, "bank": args.bank, "gallery": args.gallery, "dim": args.dim,
        "gallery_bank": args.gallery_bank if args.method == "dbnorm" else None,
        "beta": args.beta, "memory_budget_mb": args.memory_budget_mb, "threads": args.threads,
        "fit_s": round(seconds, 2), "fit_cpu_s": round(cpu, 2),
        "inputs_mib": round(sum(x.nbytes for x in (gallery, *banks.values())) / MiB, 1),
        "baseline_rss_mib": round(baseline / MiB, 1),
        "hwm_slack_before_fit_mib": round((hwm_before - baseline) / MiB, 1),
        "extra_sampled_mib": round((peak_sampled - baseline) / MiB, 1),
        "extra_hwm_mib": round((hwm_after - baseline) / MiB, 1) if hwm_after > hwm_before else None,
    }
    if args.check_cols:
        cols = min(args.check_cols, args.gallery)
        ref = reference_log_norm(query_bank, gallery[:cols], args.beta)
        result["check_cols"] = cols
        err = np.abs(model.log_norm_query_[:cols] - ref).max()
        result["max_abs_err_log_norm_query"] = float(err)
    floor, floor_cpu = gemm_seconds(list(banks.values()), gallery, args.gemm_rows)
    result.update(gemm_floor_s=round(floor, 2), gemm_floor_cpu_s=round(floor_cpu, 2),
                  fit_over_gemm=round(seconds / floor, 2),
                  fit_over_gemm_cpu=round(cpu / floor_cpu, 2))
    return result


def gemm_seconds(banks: list[np.ndarray], gallery: np.ndarray, rows: int) -> tuple[float, float]:
    """Wall and process CPU seconds of the bare float32 products bank @ gallery.T, ``rows`` bank
    rows at a time into one reused buffer (the matrix products a fit cannot avoid)."""
    import torch

    g = torch.from_numpy(gallery)
    out = torch.empty((rows, len(gallery)), dtype=torch.float32)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for bank in banks:
            for start in range(0, len(bank), rows):
                block = torch.from_numpy(bank[start:start + rows])
                torch.mm(block, g.T, out=out[:len(block)])
    return time.perf_counter() - t0, time.process_time() - c0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bank", type=int, default=591_753, help="query bank rows")
    p.add_argument("--gallery", type=int, default=5_000)
    p.add_argument("--gallery-bank", type=int, default=118_287, help="DBNorm gallery bank rows")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--beta", type=float, default=20.0)
    p.add_argument("--memory-budget-mb", type=float, default=256.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--check-cols", type=int, default=256,
                   help="gallery items checked against a float64 reference (0: skip)")
    p.add_argument("--methods", nargs="+", default=["qbnorm", "dbnorm"],
                   choices=["qbnorm", "dbnorm"])
    p.add_argument("--gemm-rows", type=int, default=8192,
                   help="bank rows per product when timing the GEMM floor")
    add_arguments(p)
    p.add_argument("--method", help=argparse.SUPPRESS)  # set for the worker subprocess
    args = p.parse_args()

    if args.method:
        print(json.dumps(worker(args)))
        return
    for _ in range(args.rounds):
        for method in args.methods:
            for code, path in checkouts(args):
                line = run_json(__file__, ["--method", method], path)
                print(json.dumps({"code": code, **line}), flush=True)

if __name__ == "__main__":
    main()
