"""Exact NNN bias time: ours vs the authors' nnn-retrieval 1.0.1, with the GEMM floor and errors.

Default size: 5,000 gallery x 118,350 references x 512-d, k = 128 (COCO 5k test images against
20% of COCO training captions); ``--full-coco`` uses all 591,753 training captions. Synthetic
unit-norm Gaussian data, seeded. Every timed step runs once per round, rounds interleaved
(``--repeats``); the best and every round are printed:

- GEMM floor: the bare similarity GEMMs, in the same blocks, into a reused buffer (no top-k);
- ours, kernel: ``exact_topk`` on tensors already on the device (GEMM + selection);
- ours, fit: ``NNN(...).fit(gallery, query_bank=refs)`` from NumPy (input checks, copies, table,
  bias);
- theirs: ``NNNRanker(NNNRetriever(d), gallery, refs, ...)`` from NumPy, in a subprocess with
  PYTHONPATH=<parity dir> (``bash .ci/install_parity.sh``); skipped with --no-theirs.

Max |bias error| is measured against a float64 NumPy reference on ``--check-rows`` random
gallery rows. Runs as-is on a GPU box: ``--device cuda [--dtype float16|bfloat16]``.

    .venv/bin/python benchmarks/bench_nnn_bias.py [--device cuda] [--full-coco]
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

from nnn.methods import NNN
from nnn.methods._exact import DTYPES, exact_topk

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
    args = ap.parse_args()
    n_refs = COCO_FULL if args.full_coco else args.n_refs
    device = torch.device(args.device)
    dt = DTYPES[args.dtype]

    gen = torch.Generator().manual_seed(args.seed)
    gallery, refs = unit_data(args.n_gallery, args.dim, gen), unit_data(n_refs, args.dim, gen)
    model = NNN(k=args.k, alpha=args.alpha, device=args.device, dtype=args.dtype,
                memory_budget_mb=args.memory_budget_mb, ref_batch_size=args.ref_batch_size,
                progress=False)
    model.fit(gallery[:64], query_bank=refs)                       # warm-up (CUDA context, caches)

    xt, rt = (torch.from_numpy(a).to(device, dt) for a in (gallery, refs))
    chunk = args.ref_batch_size or n_refs
    rows = max(1, min(len(xt), int(args.memory_budget_mb * 2**20 // (chunk * xt.element_size()))))
    theirs = not args.no_theirs
    if theirs and not (args.parity_dir / "nnn" / "nnn_ranker.py").is_file():
        sys.exit(f"nnn-retrieval not found in {args.parity_dir}: run bash .ci/install_parity.sh"
                 " or pass --no-theirs")
    # rounds interleave every timed thing, so that load from other processes hits all alike
    times = {"floor": [], "kernel": [], "fit": [], "theirs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "gallery.npy", gallery)
        np.save(tmp / "refs.npy", refs)
        for _ in range(args.repeats):
            times["floor"].append(timed(lambda: gemm_floor(xt, rt, rows), device))
            times["kernel"].append(timed(lambda: exact_topk(
                xt, rt, args.k, memory_budget_mb=args.memory_budget_mb,
                ref_batch_size=args.ref_batch_size, progress=False), device))
            times["fit"].append(timed(lambda: model.fit(gallery, query_bank=refs), device))
            if theirs:
                t, their_bias = run_theirs(tmp, args, args.parity_dir)
                times["theirs"].append(t)

    check = np.random.default_rng(args.seed).choice(args.n_gallery, min(args.check_rows,
                                                                        args.n_gallery), False)
    want = reference_bias(gallery[check], refs, args.k, args.alpha)
    err_ours = np.abs(model.bias_[check] - want).max()
    rows_out = [("GEMM floor (bare matmul, same blocks)", "floor", ""),
                ("ours: exact_topk kernel (tensors on device)", "kernel", ""),
                ("ours: NNN.fit from NumPy", "fit", f"{err_ours:.2e}")]
    if theirs:
        err_theirs = np.abs(their_bias[check] - want).max()
        rows_out.append(("theirs: nnn-retrieval NNNRanker from NumPy", "theirs",
                         f"{err_theirs:.2e}"))

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU x{os.cpu_count()}, {torch.get_num_threads()} torch threads"
    print(f"\n{args.n_gallery} gallery x {n_refs} refs x {args.dim}-d, k={args.k}, "
          f"alpha={args.alpha}, {args.device} ({dev_name}), dtype={args.dtype}, "
          f"best of {args.repeats}; bias error vs float64 on {len(check)} rows\n")
    print("| what | best s | all rounds s | max abs bias error |\n|---|---|---|---|")
    for name, key, err in rows_out:
        print(f"| {name} | {min(times[key]):.3f} | "
              f"{' '.join(f'{t:.2f}' for t in times[key])} | {err} |")
    if theirs:
        per_round = [t / f for t, f in zip(times["theirs"], times["fit"])]
        print(f"\nspeed-up theirs / ours: best vs best {min(times['theirs']) / min(times['fit']):.2f}x"
              f" (fit), {min(times['theirs']) / min(times['kernel']):.2f}x (kernel); per round "
              f"(fit) {' '.join(f'{r:.2f}' for r in per_round)}")

if __name__ == "__main__":
    main()
