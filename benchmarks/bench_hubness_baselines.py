"""Fit time and peak extra memory of MP, LS / NICDM and DSL at COCO scale (synthetic).

    nice python benchmarks/bench_hubness_baselines.py            # gallery 5,000 x bank 591,753 x 512
    python benchmarks/bench_hubness_baselines.py --small         # gallery 1,000 x bank 20,000 x 64

Random unit vectors (float32, generated in chunks so that data generation stays at the size of
the data). Each fit reads the bank once (``nnn.methods._neighbourhoods``); then 5,000 queries
are searched (top-10). Memory: the process's resident set size (``/proc/self/statm``, which
sees torch's and NumPy's allocations alike; tracemalloc would miss torch), sampled every 5 ms
by a thread; "peak extra" = the highest RSS during the fit minus the RSS just before it, each
case in a fresh process (so that one fit's freed-but-kept heap does not count towards the next).
The issue's bound is 1 GiB extra at COCO scale.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import numpy as np
import torch

from nnn.methods import DisSimLocal, LocalScaling, MutualProximity

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """Context manager: ``extra`` = peak RSS inside minus RSS at entry (bytes)."""

    def __enter__(self):
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.extra = self.peak - self.start


def unit_rows(rng, n: int, d: int, chunk: int = 65536) -> np.ndarray:
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + len(block)] = block
    return out


CASES = {
    "mp": ("MP gaussian, k=None (whole bank)", lambda **kw: MutualProximity(**kw)),
    "mp_empirical": ("MP empirical, k=64, k_max=512",
                     lambda **kw: MutualProximity(k=64, k_max=512, variant="empirical", **kw)),
    "ls": ("LS standard, k=64, k_max=512", lambda **kw: LocalScaling(k=64, k_max=512, **kw)),
    "nicdm": ("LS nicdm, k=64, k_max=512",
              lambda **kw: LocalScaling(k=64, k_max=512, variant="nicdm", **kw)),
    "dsl": ("DSL, k=64, k_max=512", lambda **kw: DisSimLocal(k=64, k_max=512, **kw)),
}


def run_case(case: str, small: bool, budget: float) -> None:
    """Build the data, fit one method, search; print one table row."""
    n_g, n_b, d = (1_000, 20_000, 64) if small else (5_000, 591_753, 512)
    rng = np.random.default_rng(0)
    gallery, bank, queries = unit_rows(rng, n_g, d), unit_rows(rng, n_b, d), unit_rows(rng, 5_000, d)
    name, make = CASES[case]
    method = make(memory_budget_mb=budget, progress=False)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        method.fit(gallery, query_bank=bank)
        fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    method.search(queries, top_k=10)
    search_s = time.perf_counter() - t0
    print(f"| {name} | {fit_s:.1f} | {mem.extra / 2**20:.0f} | {search_s:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="gallery 1,000, bank 20,000, d 64")
    parser.add_argument("--memory-budget-mb", type=float, default=256.0)
    parser.add_argument("--case", choices=sorted(CASES), help="run this case only, in-process")
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.small, args.memory_budget_mb)
        return
    n_g, n_b, d = (1_000, 20_000, 64) if args.small else (5_000, 591_753, 512)
    print(f"gallery {n_g} x bank {n_b} x d {d}, float32; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; memory_budget_mb={args.memory_budget_mb}; "
          "each case in a fresh process")
    print("| method | fit s | peak extra RSS in fit (MiB) | search 5,000 queries top-10 s |")
    print("|---|---|---|---|", flush=True)
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case,
               "--memory-budget-mb", str(args.memory_budget_mb)] + (["--small"] if args.small else [])
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
