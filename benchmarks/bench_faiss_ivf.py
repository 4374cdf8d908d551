"""NNN biases from a FAISS IVF index vs exact: speed at scale (synthetic), R@1 (real + synthetic).

Speed (synthetic, default 5,000 gallery x 118,350 references x 512-d, k = 128): a clustered
mixture with a shared "hub" direction (see ``synthetic_problem``), so that approximate search
behaves as on embeddings rather than on isotropic noise, and a paired retrieval task (query i
belongs to gallery item i) gives an R@1. Every timed step runs once per round, rounds
interleaved (``--repeats``); the best and every round are printed:

- exact fit: ``NNN(k).fit`` (torch GEMM + selection);
- build: ``ReferenceIndex`` (input check + copy, k-means train + add via ``faiss_index``; nlist
  ``default_nlist`` ~ 4 sqrt(n_refs)), once per index kind ("ivf" = ``IndexIVFFlat``,
  "ivf_fp16" = float16 ``IndexIVFScalarQuantizer``);
- search: the k nearest references of every gallery item from the built index, at the library's
  ``default_nprobe`` and at each ``--nprobe``, with the library's CPU search (``ivf_topk``: one
  GEMM per inverted list) and with FAISS's own ``index.search`` for comparison;
- IVF fit: ``NNN(k, backend="faiss", index=kind).fit`` at default settings with the reference
  array, i.e. build + search + checks: what a fit costs when it builds the index;
- prebuilt fit: ``NNN(k, backend="faiss").fit(gallery, query_bank=ref_index)`` with the
  ``ReferenceIndex`` built once above, at the default nprobe: search + checks, what every fit
  after the first costs over a fixed reference set (the paper's Table A5 setting).

Speed-ups against the exact fit are given for search alone, for the prebuilt fit and for the
whole IVF fit.

Accuracy on real embeddings (``shared/data/flickr30k_clip_vitl14_1k``, 1,000 CLIP ViT-L/14
pairs): each half in turn is the reference set (its captions for text->image, its images for
image->text) and the other half is evaluated (500 queries), k = 16, alpha = 0.75; R@1 of exact
NNN against IVF NNN at the library defaults (what ``NNN(backend="faiss", index="ivf")`` does for
500 references) and at each ``--real-nprobe``, with the recall of the exact top-k.

    .venv/bin/python benchmarks/bench_faiss_ivf.py [--nprobe 8 12] [--repeats 5]
    .venv/bin/python benchmarks/bench_faiss_ivf.py --n-refs 591753 --skip-real --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from machine import describe  # benchmarks/ is on sys.path when this script runs

from nnn.methods import NNN, ReferenceIndex
from nnn.methods._topk import (default_nlist, default_nprobe, faiss_topk,
                               gpu_faiss_available, ivf_topk)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NNN_SHARED_DATA", REPO.parent / "shared" / "data"))


def unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=1).numpy()


def synthetic_problem(n_gallery: int, n_refs: int, d: int, seed: int, n_clusters: int = 1024):
    """Clustered items (spread 0.5 around 1024 centres); gallery items lean on a hub direction h
    by a random amount (0.6 x Exp(1)); queries (and reference queries, around other items) are
    noisy copies (noise norm ~1.5) shifted by h. Query i belongs to gallery item i.
    Returns gallery (n_g, d), queries (n_g, d), refs (n_r, d), float32 unit rows."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_clusters, d, generator=gen), dim=1)
    h = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)

    def items(n):
        which = torch.randint(n_clusters, (n,), generator=gen)
        return centres[which] + 0.5 * torch.randn(n, d, generator=gen) / d**0.5

    def queries_around(x):
        return unit(x + 1.5 * torch.randn(x.shape, generator=gen) / d**0.5 + h)

    base = items(n_gallery)
    lean = torch.empty(n_gallery, 1).exponential_(generator=gen) * 0.6
    return unit(base + lean * h), queries_around(base), queries_around(items(n_refs))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def recall_at_1(queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray) -> float:
    """Percent of queries i whose best gallery item by s(q, r) - bias(r) is item i."""
    s = torch.from_numpy(queries) @ torch.from_numpy(gallery).T - torch.from_numpy(bias)
    return 100.0 * float((s.argmax(dim=1).numpy() == np.arange(len(queries))).mean())


def topk_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row's exact top-k similarities that ``found`` (n, k) holds: the
    found values at or above the row's exact k-th largest."""
    return float((found >= exact[:, -1:] - 1e-6).mean())


def conditions() -> str:
    """``machine.describe()`` plus the FAISS version and the SIMD level of its kernels."""
    simd = getattr(getattr(faiss, "SIMDConfig", None), "get_level_name", lambda: "?")()
    return f"{describe()}; faiss {faiss.__version__} ({simd} kernels)"


def rounds(ts) -> str:
    return " ".join(f"{t:.3f}" for t in ts)


def speed_part(args, use_gpu: bool) -> None:
    gallery, queries, refs = synthetic_problem(args.n_gallery, args.n_refs, args.dim, args.seed)
    k, alpha = args.k, args.alpha
    nlist = args.nlist or default_nlist(args.n_refs)
    auto = default_nprobe(args.n_refs, nlist, k)
    probes = sorted({auto, *args.nprobe})

    def fit(bank=refs, **kw):
        return NNN(k=k, alpha=alpha, device=args.device, progress=False, **kw).fit(
            gallery, query_bank=bank)

    exact = fit()                                                           # warm-up
    t_build, indexes = {}, {}
    for kind in args.indexes:
        t_build[kind], indexes[kind] = timed(lambda: ReferenceIndex(
            refs, index=kind, nlist=nlist, use_gpu_faiss=use_gpu))

    def search(kind, nprobe, how):
        idx = indexes[kind].faiss_index
        if how == "faiss" or use_gpu:
            idx.nprobe = nprobe
            return faiss_topk(idx, gallery, k)
        return ivf_topk(idx, gallery, k, nprobe, memory_budget_mb=512.0)

    hows = ("faiss",) if use_gpu else ("list-major", "faiss")
    cases = [(kind, p, how) for kind in args.indexes for p in probes for how in hows]
    t_exact, t_search, tables = [], {}, {}
    t_fit, t_prebuilt = ({kind: [] for kind in args.indexes} for _ in range(2))
    prebuilt_bias = {}
    for _ in range(args.repeats):
        t_exact.append(timed(fit)[0])
        for kind in args.indexes:
            t_fit[kind].append(timed(lambda: fit(backend="faiss", index=kind, nlist=args.nlist))[0])
            t, m = timed(lambda: fit(indexes[kind], backend="faiss"))
            t_prebuilt[kind].append(t)
            prebuilt_bias[kind] = m.bias_
        for case in cases:
            t, tables[case] = timed(lambda: search(*case))
            t_search.setdefault(case, []).append(t)
    best_exact = min(t_exact)
    r1_plain = recall_at_1(queries, gallery, np.zeros(len(gallery), np.float32))
    r1_exact = recall_at_1(queries, gallery, exact.bias_)
    print(f"\nspeed: {args.n_gallery} gallery x {args.n_refs} refs x {args.dim}-d, k={k}, "
          f"alpha={alpha}, exact on {args.device}, FAISS {'GPU' if use_gpu else 'CPU'} IVF "
          f"nlist={nlist}, default nprobe={auto}, {args.repeats} interleaved rounds (best)")
    print(f"conditions: {conditions()}\n")
    print(f"exact fit {best_exact:.3f} s (rounds {rounds(t_exact)}); synthetic R@1: no "
          f"correction {r1_plain:.2f}, exact NNN {r1_exact:.2f}")
    for kind in args.indexes:
        print(f"{kind}: build (ReferenceIndex: check + train + add, once) {t_build[kind]:.2f} s; "
              f"NNN fit at defaults (build + search) {min(t_fit[kind]):.2f} s (rounds "
              f"{rounds(t_fit[kind])}) = {best_exact / min(t_fit[kind]):.2f}x exact; NNN fit "
              f"with the prebuilt index (nprobe {auto}) {min(t_prebuilt[kind]):.3f} s (rounds "
              f"{rounds(t_prebuilt[kind])}) = {best_exact / min(t_prebuilt[kind]):.1f}x exact, "
              f"bias max abs err {np.abs(prebuilt_bias[kind] - exact.bias_).max():.2e}")
    print("\n| index | nprobe | search | search s (rounds) | speed-up, search | "
          "speed-up, build+search | max abs bias err | mean abs bias err | top-k recall | R@1 "
          "| dR@1 |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        kind, nprobe, how = case
        table = tables[case].astype(np.float64)
        short = int(np.isneginf(table[:, -1]).sum())
        t = min(t_search[case])
        label = f"{nprobe}{' (default)' if nprobe == auto else ''}"
        cells = f"| {kind} | {label} | {how} | {t:.3f} ({rounds(t_search[case])}) | " \
                f"{best_exact / t:.1f}x | {best_exact / (t_build[kind] + t):.2f}x | "
        if short:
            print(cells + f"{short} items found < k | | | | |")
            continue
        bias = (alpha * table.mean(axis=1)).astype(np.float32)
        err = np.abs(bias - exact.bias_)
        r1 = recall_at_1(queries, gallery, bias)
        print(cells + f"{err.max():.2e} | {err.mean():.2e} | "
              f"{topk_recall(table, exact.topk_sims_):.3f} | {r1:.2f} | {r1 - r1_exact:+.2f} |")
    print(f"\nload average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def real_part(args) -> None:
    folder = SHARED / "flickr30k_clip_vitl14_1k"
    if not (folder / "image_embeddings.npy").is_file():
        print(f"\nreal-data part skipped: {folder} not found (set NNN_SHARED_DATA)")
        return
    # rows whose probed lists hold < k references are completed exactly; the warning is noise
    logging.getLogger("nnn.methods._topk").setLevel(logging.ERROR)
    image = np.load(folder / "image_embeddings.npy")
    text = np.load(folder / "text_embeddings.npy")
    halves = (slice(0, 500), slice(500, 1000))
    k, alpha = 16, 0.75
    nlist = default_nlist(500)
    auto = default_nprobe(500, nlist, k)
    print(f"\nreal: Flickr30k CLIP ViT-L/14, 500 reference pairs / 500 evaluated pairs (both "
          f"ways round), k={k}, alpha={alpha}, index ivf, nlist={nlist} (default); library "
          f"default nprobe={auto}. Cells: R@1 (dR@1 vs exact) / recall of the exact top-{k}\n")
    print("| direction | refs | R@1 plain | R@1 exact NNN | IVF default | " +
          " | ".join(f"nprobe={p}" for p in args.real_nprobe) + " |")
    print("|---|---|---|---|---|" + "---|" * len(args.real_nprobe))
    deltas = {p: [] for p in ("default", *args.real_nprobe)}
    for name, gal_all, q_all, bank_all in (("text->image", image, text, text),
                                           ("image->text", text, image, image)):
        for ref, ev in (halves, halves[::-1]):
            gal, q, bank = gal_all[ev], q_all[ev], bank_all[ref]
            plain = recall_at_1(q, gal, np.zeros(len(gal), np.float32))
            exact = NNN(k=k, alpha=alpha, progress=False).fit(gal, query_bank=bank)
            r1_exact = recall_at_1(q, gal, exact.bias_)
            cells = []
            for p in ("default", *args.real_nprobe):
                m = NNN(k=k, alpha=alpha, backend="faiss", index="ivf", progress=False,
                        nprobe=None if p == "default" else p).fit(gal, query_bank=bank)
                r1 = recall_at_1(q, gal, m.bias_)
                deltas[p].append(r1 - r1_exact)
                cells.append(f"{r1:.1f} ({r1 - r1_exact:+.1f}) / "
                             f"{topk_recall(m.topk_sims_, exact.topk_sims_):.2f}")
            print(f"| {name} | pairs {ref.start}-{ref.stop - 1} | {plain:.1f} | {r1_exact:.1f} | "
                  + " | ".join(cells) + " |")
    print("\nmax |dR@1| over the 4 settings: " +
          ", ".join(f"{'default' if p == 'default' else f'nprobe={p}'}: "
                    f"{max(abs(x) for x in v):.1f}" for p, v in deltas.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-gallery", type=int, default=5000)
    ap.add_argument("--n-refs", type=int, default=118_350)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--nlist", type=int, default=None, help="default: default_nlist(n_refs)")
    ap.add_argument("--nprobe", type=int, nargs="*", default=[8, 12],
                    help="nprobe values timed besides the library default")
    ap.add_argument("--indexes", nargs="+", default=["ivf", "ivf_fp16"],
                    choices=["ivf", "ivf_fp16"])
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--real-nprobe", type=int, nargs="+", default=[2, 4, 6, 8, 10])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--use-gpu-faiss", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    if args.use_gpu_faiss and not gpu_faiss_available():
        raise SystemExit("--use-gpu-faiss: this FAISS has no GPU support or sees no GPU")
    if not args.skip_speed:
        speed_part(args, args.use_gpu_faiss)
    if not args.skip_real:
        real_part(args)


if __name__ == "__main__":
    main()
