"""Exact NNN bias time: ours vs the authors' nnn-retrieval 1.0.1, with the GEMM floor and errors.

Default size: 5,000 gallery x 118,350 references x 512-d, k = 128 (COCO 5k test images against
20% of COCO training captions); ``--full-coco`` uses all 591,753 training captions. Synthetic
unit-norm Gaussian data, seeded. Every timed step runs once per round, rounds interleaved
(``--repeats``); the best and every round are printed:

- GEMM floor: the bare float32 similarity GEMMs, in the same blocks, into a reused buffer (no
  top-k);
- ours: ``NNN(precision=route).fit(gallery, query_bank=refs)`` from NumPy (input checks, copies,
  table, bias) for each of ``--routes`` ("auto" is what a user gets: the probe's choice, printed
  with the probe's GEMM and block top-k times); each route's bias is also compared with the
  float32 route's;
- theirs: ``NNNRanker(NNNRetriever(d), gallery, refs, ...)`` from NumPy, in a subprocess with
  PYTHONPATH=<parity dir> (``bash .ci/install_parity.sh``); skipped with --no-theirs.

Max |bias error| is measured against a float64 NumPy reference on ``--check-rows`` random
gallery rows. The machine line names the CPU model and its GEMM flags (``machine.describe``).
Runs as-is on a GPU box: ``--device cuda [--dtype float16|bfloat16]``.
``--scaling``: NNN.fit time against the number of references (10k to 591k), exact and IVF, to
show where IVF starts to pay.

    .venv/bin/python benchmarks/bench_nnn_bias.py [--device cuda] [--full-coco] [--scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import describe
from nnn.methods import NNN, ReferenceIndex
from nnn.methods._exact import DTYPES, probe as route_probe

REPO = Path(__file__).resolve().parents[1]
COCO_20PCT, COCO_FULL = 118_350, 591_753


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def unit_data(n: int, d: int, gen: torch.Generator) -> np.ndarray:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1).numpy()


def reference_bias(gallery: np.ndarray, refs: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """alpha * mean of the k largest similarities, float64, a few rows at a time."""
    out = np.empty(len(gallery))
    refs64 = refs.astype(np.float64)
    for s in range(0, len(gallery), 16):
        sims = gallery[s:s + 16].astype(np.float64) @ refs64.T
        out[s:s + 16] = alpha * np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)
    return out


def gemm_floor(x: torch.Tensor, refs: torch.Tensor, rows: int) -> None:
    buf = torch.empty(rows, len(refs), dtype=x.dtype, device=x.device)
    with torch.inference_mode():
        for s in range(0, len(x), rows):
            xb = x[s:s + rows]
            torch.mm(xb, refs.T, out=buf[:len(xb)])


def run_theirs(data_dir: Path, args, parity_dir: Path) -> tuple[float, np.ndarray]:
    """Seconds of one authors' NNNRanker construction on data_dir/*.npy, and their bias (n_g,)."""
    gpu_id = "0" if args.device == "cuda" else "-1"
    out = data_dir / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "run_nnn_retrieval.py"),
           "--data", str(data_dir), "--out", str(out), "--k", str(args.k),
           "--alpha", str(args.alpha), "--batch-size", str(args.their_batch_size),
           "--gpu-id", gpu_id]
    env = {**os.environ, "PYTHONPATH": str(parity_dir), "TQDM_DISABLE": "1"}
    subprocess.run(cmd, cwd=data_dir, env=env, check=True)
    info = json.loads((out / "run0" / "info.json").read_text())
    return info["seconds"][0], np.load(out / "run0" / "bias.npy")


def timed_fit(model: NNN, gallery: np.ndarray, refs, device: torch.device) -> float:
    return timed(lambda: model.fit(gallery, query_bank=refs), device)


def bias_table(args, device: torch.device, gallery: np.ndarray, refs: np.ndarray) -> None:
    """Best-of-rounds table: GEMM floors, NNN.fit per route, theirs; errors and ratios."""
    n_refs = len(refs)
    dt = DTYPES[args.dtype]
    routes = args.routes.split(",")
    models = {r: NNN(k=args.k, alpha=args.alpha, device=args.device, dtype=args.dtype,
                     precision=r if args.dtype == "float32" else "auto",
                     memory_budget_mb=args.memory_budget_mb, ref_batch_size=args.ref_batch_size,
                     progress=False) for r in routes}
    for m in models.values():                      # warm-up (CUDA context, caches, the probe)
        m.fit(gallery[:64], query_bank=refs)
    xt, rt = (torch.from_numpy(a).to(device, dt) for a in (gallery, refs))
    chunk = args.ref_batch_size or n_refs
    rows = max(1, min(len(xt), int(args.memory_budget_mb * 2**20 // (chunk * xt.element_size()))))
    theirs = not args.no_theirs
    if theirs and not (args.parity_dir / "nnn" / "nnn_ranker.py").is_file():
        sys.exit(f"nnn-retrieval not found in {args.parity_dir}: run bash .ci/install_parity.sh"
                 " or pass --no-theirs")
    # rounds interleave every timed thing, so that load from other processes hits all alike
    times = {"floor": [], **{r: [] for r in routes}, "theirs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "gallery.npy", gallery)
        np.save(tmp / "refs.npy", refs)
        for _ in range(args.repeats):
            times["floor"].append(timed(lambda: gemm_floor(xt, rt, rows), device))
            for r, m in models.items():
                times[r].append(timed_fit(m, gallery, refs, device))
            if theirs:
                t, their_bias = run_theirs(tmp, args, args.parity_dir)
                times["theirs"].append(t)

    check = np.random.default_rng(args.seed).choice(len(gallery), min(args.check_rows,
                                                                      len(gallery)), False)
    want = reference_bias(gallery[check], refs, args.k, args.alpha)
    base = models.get("float32")
    rows_out = [("GEMM floor (bare float32 matmul, same blocks)", "floor", "", "")]
    for r, m in models.items():
        vs32 = "" if base is None else f"{np.abs(m.bias_ - base.bias_).max():.1e}"
        rows_out.append((f"ours: NNN.fit, precision={r} (ran: {m.route_})", r,
                         f"{np.abs(m.bias_[check] - want).max():.2e}", vs32))
    if theirs:
        rows_out.append(("theirs: nnn-retrieval NNNRanker from NumPy", "theirs",
                         f"{np.abs(their_bias[check] - want).max():.2e}", ""))

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else describe()
    print(f"\n{len(gallery)} gallery x {n_refs} refs x {args.dim}-d, k={args.k}, "
          f"alpha={args.alpha}, {args.device} ({dev_name}), dtype={args.dtype}, "
          f"best of {args.repeats}; bias error vs float64 on {len(check)} rows, and vs the "
          "float32 route on all rows")
    if device.type == "cpu" and "auto" in models:
        probe = route_probe(args.dim, args.k, n_refs)
        rounded = lambda times: {n: round(t, 5) for n, t in times.items()}
        print(f"auto's probe: {probe['route']}; GEMM seconds {rounded(probe['gemm_seconds'])}, "
              f"block top-k seconds {rounded(probe['seconds'])}"
              + (f"; not used: {probe['rejected']}" if probe["rejected"] else ""))
    print("\n| what | best s | all rounds s | max abs bias error (float64) | vs float32 route |"
          "\n|---|---|---|---|---|")
    for name, key, err, vs32 in rows_out:
        print(f"| {name} | {min(times[key]):.3f} | "
              f"{' '.join(f'{t:.2f}' for t in times[key])} | {err} | {vs32} |")
    if theirs:
        for r in routes:
            per_round = [t / f for t, f in zip(times["theirs"], times[r])]
            print(f"speed-up theirs / ours (precision={r}): best vs best "
                  f"{min(times['theirs']) / min(times[r]):.2f}x; per round "
                  f"{' '.join(f'{x:.2f}' for x in per_round)}")
    for r in routes:
        print(f"ours (precision={r}) / float32 GEMM floor: "
              f"{min(times[r]) / min(times['floor']):.2f}x")


def scaling_table(args, device: torch.device, gallery: np.ndarray, gen) -> None:
    """NNN.fit seconds against the number of references: exact (auto, float32) and FAISS IVF
    (build + search, and search of a prebuilt ReferenceIndex), with IVF's bias error."""
    print(f"\nscaling: {len(gallery)} gallery x n_refs x {args.dim}-d, k={args.k}; "
          f"{describe()}; best of {args.repeats} (IVF build: 1)\n")
    print("| n_refs | exact auto s (route) | exact float32 s | IVF build + search s | "
          "IVF search s (prebuilt) | IVF max abs bias error |\n|---|---|---|---|---|---|")
    for n_refs in (int(n) for n in args.scaling_refs.split(",")):
        refs = unit_data(n_refs, args.dim, gen)
        auto = NNN(k=args.k, alpha=args.alpha, progress=False)
        f32 = NNN(k=args.k, alpha=args.alpha, precision="float32", progress=False)
        ivf = NNN(k=args.k, alpha=args.alpha, backend="faiss", index="ivf", progress=False)
        t_auto = min(timed_fit(auto, gallery, refs, device) for _ in range(args.repeats))
        t_f32 = min(timed_fit(f32, gallery, refs, device) for _ in range(args.repeats))
        t_build = timed_fit(ivf, gallery, refs, device)
        index = ReferenceIndex(refs, index="ivf", use_gpu_faiss=False)
        t_search = min(timed_fit(ivf, gallery, index, device) for _ in range(args.repeats))
        err = np.abs(ivf.bias_ - f32.bias_).max()
        print(f"| {n_refs:,} | {t_auto:.2f} ({auto.route_}) | {t_f32:.2f} | {t_build:.2f} | "
              f"{t_search:.2f} | {err:.1e} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-gallery", type=int, default=5000)
    ap.add_argument("--n-refs", type=int, default=COCO_20PCT)
    ap.add_argument("--full-coco", action="store_true", help=f"--n-refs {COCO_FULL}")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--memory-budget-mb", type=float, default=512.0)
    ap.add_argument("--ref-batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check-rows", type=int, default=200)
    ap.add_argument("--no-theirs", action="store_true")
    ap.add_argument("--their-batch-size", type=int, default=128, help="their default is 128")
    ap.add_argument("--parity-dir", type=Path, default=Path(os.environ.get(
        "NNN_PARITY_DIR", REPO / ".parity" / "nnn_retrieval")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--routes", default=None,
                    help="NNN precision routes to time (default: auto,float32,float32_numpy,"
                         "bfloat16 on the CPU, float32 on CUDA)")
    ap.add_argument("--scaling", action="store_true",
                    help="instead: NNN.fit time against n_refs (exact and IVF)")
    ap.add_argument("--scaling-refs", default="10000,30000,118350,300000,591753")
    args = ap.parse_args()
    if args.routes is None:
        args.routes = "float32" if args.device != "cpu" else "auto,float32,float32_numpy,bfloat16"
    n_refs = COCO_FULL if args.full_coco else args.n_refs
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    gallery = unit_data(args.n_gallery, args.dim, gen)
    if args.scaling:
        scaling_table(args, device, gallery, gen)
    else:
        bias_table(args, device, gallery, unit_data(n_refs, args.dim, gen))


if __name__ == "__main__":
    main()
