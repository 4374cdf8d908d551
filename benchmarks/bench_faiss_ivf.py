"""NNN biases from a FAISS IVF index vs exact: speed at scale (synthetic) and R@1 (real + synthetic).

Speed (synthetic, default 5,000 gallery x 118,350 references x 512-d, k = 128): a clustered
mixture with a shared "hub" direction (see ``synthetic_problem``), so that approximate search
behaves as on embeddings rather than on isotropic noise, and a paired retrieval task (query i
belongs to gallery item i) gives an R@1. Timed, best of ``--repeats``:

- exact: ``NNN(k).fit`` (torch GEMM + selection);
- IVF build: train + add over the references (once; nlist ``default_nlist`` = ~4 sqrt(n_refs)),
  for ``IndexIVFFlat`` ("ivf") and the float16-storage ``IndexIVFScalarQuantizer`` ("ivf_fp16");
- IVF search: k nearest references of every gallery item for each ``--nprobe``; the biases
  follow from a mean. Speed-up is reported against exact for search alone (index built once and
  reused, the paper's "sublinear" setting) and for build + search.

Accuracy on real embeddings (``shared/data/flickr30k_clip_vitl14_1k``, 1,000 CLIP ViT-L/14
pairs): each half in turn is the reference set (its captions for text->image, its images for
image->text) and the other half is evaluated, k = 16, alpha = 0.75; R@1 exact vs IVF at the
default nlist (12 lists for 500 references) and several nprobe. With only 500 references this
checks correctness of the path more than approximation at scale; the synthetic task gives
delta R@1 at 118k references.

    .venv/bin/python benchmarks/bench_faiss_ivf.py [--device cuda] [--nprobe 4 8 16 32]
    .venv/bin/python benchmarks/bench_faiss_ivf.py --n-refs 591753 --indexes ivf_fp16 --skip-real
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from nnn.methods import NNN
from nnn.methods._topk import default_nlist, faiss_index, faiss_topk, gpu_faiss_available

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


def best_time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def recall_at_1(queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray) -> float:
    """Percent of queries i whose best gallery item by s(q, r) - bias(r) is item i."""
    s = torch.from_numpy(queries) @ torch.from_numpy(gallery).T - torch.from_numpy(bias)
    return 100.0 * float((s.argmax(dim=1).numpy() == np.arange(len(queries))).mean())


def speed_part(args, use_gpu: bool) -> None:
    gallery, queries, refs = synthetic_problem(args.n_gallery, args.n_refs, args.dim, args.seed)
    k, alpha = args.k, args.alpha
    exact_fit = lambda: NNN(k=k, alpha=alpha, device=args.device, progress=False).fit(
        gallery, query_bank=refs)
    exact = exact_fit()                                                     # warm-up
    nlist = args.nlist or default_nlist(args.n_refs)
    kinds = args.indexes
    t_build, indexes = {}, {}
    for kind in kinds:
        t_build[kind], indexes[kind] = best_time(lambda: faiss_index(
            refs, index=kind, nlist=nlist, nprobe=1, use_gpu=use_gpu), 1)
    # rounds interleave exact and every index/nprobe, so that load from other processes hits
    # all alike
    cases = [(kind, p) for kind in kinds for p in args.nprobe]
    t_exact, t_search, tables = [], {c: [] for c in cases}, {}
    for _ in range(args.repeats):
        t_exact.append(best_time(exact_fit, 1)[0])
        for kind, nprobe in cases:
            idx = indexes[kind]
            idx.nprobe = nprobe
            try:
                t, tables[kind, nprobe] = best_time(lambda: faiss_topk(idx, gallery, k), 1)
            except RuntimeError as err:
                tables[kind, nprobe] = err
                continue
            t_search[kind, nprobe].append(t)
    best_exact = min(t_exact)
    r1_plain = recall_at_1(queries, gallery, np.zeros(len(gallery), np.float32))
    r1_exact = recall_at_1(queries, gallery, exact.bias_)
    print(f"\nspeed: {args.n_gallery} gallery x {args.n_refs} refs x {args.dim}-d, k={k}, "
          f"alpha={alpha}, exact on {args.device}, FAISS {'GPU' if use_gpu else 'CPU'} IVF "
          f"nlist={nlist}, best of {args.repeats} interleaved rounds\n")
    print(f"exact fit {best_exact:.3f} s (rounds {' '.join(f'{t:.2f}' for t in t_exact)}); "
          "IVF build (train + add, once): "
          + ", ".join(f"{kind} {t:.2f} s" for kind, t in t_build.items())
          + f"; synthetic R@1: no correction {r1_plain:.2f}, exact NNN {r1_exact:.2f}\n")
    print("| index | nprobe | search s | speed-up (search) | speed-up (build+search) | "
          "max abs bias err | mean abs bias err | R@1 | dR@1 |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for kind, nprobe in cases:
        table = tables[kind, nprobe]
        if isinstance(table, RuntimeError):
            print(f"| {kind} | {nprobe} | fails: {str(table).split(';')[0]} | | | | | | |")
            continue
        t = min(t_search[kind, nprobe])
        bias = (alpha * table.mean(axis=1, dtype=np.float64)).astype(np.float32)
        err = np.abs(bias - exact.bias_)
        r1 = recall_at_1(queries, gallery, bias)
        print(f"| {kind} | {nprobe} | {t:.3f} | {best_exact / t:.1f}x | "
              f"{best_exact / (t_build[kind] + t):.2f}x | {err.max():.2e} | {err.mean():.2e} | "
              f"{r1:.2f} | {r1 - r1_exact:+.2f} |")


def real_part(args) -> None:
    folder = SHARED / "flickr30k_clip_vitl14_1k"
    if not (folder / "image_embeddings.npy").is_file():
        print(f"\nreal-data part skipped: {folder} not found (set NNN_SHARED_DATA)")
        return
    image = np.load(folder / "image_embeddings.npy")
    text = np.load(folder / "text_embeddings.npy")
    halves = (slice(0, 500), slice(500, 1000))
    nlist = default_nlist(500)
    print(f"\nreal: Flickr30k CLIP ViT-L/14, 500 reference pairs / 500 evaluated pairs (both "
          f"ways round), k=16, alpha=0.75, IVF nlist={nlist}\n")
    print("| direction | refs | R@1 plain | R@1 exact NNN | " +
          " | ".join(f"IVF nprobe={p}" for p in args.real_nprobe) + " |")
    print("|---|---|---|---|" + "---|" * len(args.real_nprobe))
    deltas = {p: [] for p in args.real_nprobe}
    for name, gal_all, q_all, bank_all in (("text->image", image, text, text),
                                           ("image->text", text, image, image)):
        for ref, ev in (halves, halves[::-1]):
            gal, q, bank = gal_all[ev], q_all[ev], bank_all[ref]
            plain = recall_at_1(q, gal, np.zeros(len(gal), np.float32))
            exact = recall_at_1(q, gal, NNN(k=16, alpha=0.75, progress=False).fit(
                gal, query_bank=bank).bias_)
            cells = []
            for p in args.real_nprobe:
                try:
                    m = NNN(k=16, alpha=0.75, backend="faiss", index="ivf", nprobe=p,
                            progress=False).fit(gal, query_bank=bank)
                except RuntimeError:  # too few probed lists to hold 16 neighbours
                    cells.append("fails (< k found)")
                    continue
                r1 = recall_at_1(q, gal, m.bias_)
                deltas[p].append(r1 - exact)
                cells.append(f"{r1:.1f} ({r1 - exact:+.1f})")
            print(f"| {name} | pairs {ref.start}-{ref.stop - 1} | {plain:.1f} | {exact:.1f} | "
                  + " | ".join(cells) + " |")
    print("\nmax |dR@1| over the settings that ran: " +
          ", ".join(f"nprobe={p}: {max(abs(x) for x in v):.1f} ({len(v)} of 4)"
                    for p, v in deltas.items() if v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-gallery", type=int, default=5000)
    ap.add_argument("--n-refs", type=int, default=118_350)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--nlist", type=int, default=None, help="default: default_nlist(n_refs)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 6, 8, 12])
    ap.add_argument("--indexes", nargs="+", default=["ivf", "ivf_fp16"],
                    choices=["ivf", "ivf_fp16"])
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--real-nprobe", type=int, nargs="+", default=[1, 2, 4, 6, 8])
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
