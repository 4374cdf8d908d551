"""Cost of NNN's whole (alpha, k) grid from one top-K_max table vs one bias computation.

The paper tunes alpha in {0.25, 0.375, ..., 1.5} (11 values) and k in {1, 2, 4, ..., 512}
(10 values): 110 biases. Compared, on synthetic unit-norm data (default 5,000 x 118,350 x 512-d):

- single: ``NNN(k=128).fit`` (one bias, table width 128);
- grid: ``NNN(k=128, k_max=512).fit`` + ``bias_grid(ks, alphas)`` (all 110 biases, one pass);
- per-k refits: one ``NNN(k=k).fit`` per k (the naive way; alpha is free either way), with
  ``--per-k`` only (about 10x single).

Target: grid <= 1.3x single. Best of ``--repeats`` interleaved rounds.

    .venv/bin/python benchmarks/bench_nnn_grid.py [--device cuda] [--per-k]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from machine import describe
from nnn.methods import NNN

ALPHAS = [0.25 + 0.125 * i for i in range(11)]       # 0.25, 0.375, ..., 1.5
KS = [2**i for i in range(10)]                       # 1, 2, 4, ..., 512


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-gallery", type=int, default=5000)
    ap.add_argument("--n-refs", type=int, default=118_350)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-k", action="store_true", help="also time one refit per k (slow)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    gallery, refs = (torch.nn.functional.normalize(torch.randn(n, args.dim, generator=gen),
                                                   dim=1).numpy()
                     for n in (args.n_gallery, args.n_refs))
    fit = lambda **kw: NNN(device=args.device, progress=False, **kw).fit(gallery, query_bank=refs)
    fit(k=8)                                                        # warm-up

    def grid():
        m = fit(k=128, k_max=max(KS))
        return m, m.bias_grid(KS, ALPHAS)

    # rounds interleave the two, so that load from other processes hits both alike
    singles, grids = [], []
    for _ in range(args.repeats):
        t, single = best_time(lambda: fit(k=128), 1)
        singles.append(t)
        t, (m, biases) = best_time(grid, 1)
        grids.append(t)
    t_single, t_grid = min(singles), min(grids)
    assert biases.shape == (len(ALPHAS), len(KS), args.n_gallery)
    err = np.abs(biases[ALPHAS.index(0.75), KS.index(128)] - single.bias_).max()
    t_table_only, _ = best_time(lambda: m.bias_grid(KS, ALPHAS), args.repeats)

    print(f"\n{args.n_gallery} gallery x {args.n_refs} refs x {args.dim}-d on {args.device} "
          f"({describe()}), grid {len(ALPHAS)} alpha x {len(KS)} k = "
          f"{len(ALPHAS) * len(KS)} biases, best of {args.repeats}; routes (precision='auto'): "
          f"single {single.route_}, grid {m.route_}\n")
    print("| what | seconds | vs single |\n|---|---|---|")
    rounds = lambda ts: " ".join(f"{t:.2f}" for t in ts)
    print(f"| single bias, k=128 (fit) | {t_single:.3f} (rounds {rounds(singles)}) | 1.00x |")
    print(f"| whole grid: fit with k_max=512 + bias_grid | {t_grid:.3f} (rounds {rounds(grids)}) | "
          f"{t_grid / t_single:.2f}x (per round "
          f"{' '.join(f'{g / s:.2f}' for g, s in zip(grids, singles))}) |")
    print(f"| bias_grid alone (from the stored table) | {t_table_only:.4f} | "
          f"{t_table_only / t_single:.3f}x |")
    if args.per_k:
        t_per_k = sum(best_time(lambda: fit(k=k), 1)[0] for k in KS)
        print(f"| one fit per k (10 fits) | {t_per_k:.3f} | {t_per_k / t_single:.2f}x |")
    print(f"\nmax |grid[alpha=0.75, k=128] - single bias_| = {err:.2e}")


if __name__ == "__main__":
    main()
