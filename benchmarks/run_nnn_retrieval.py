"""Run the authors' NNN (PyPI nnn-retrieval 1.0.1) on saved arrays; used by the parity test and
bench_nnn_bias.py. Run it with ``PYTHONPATH=<parity dir>`` (see .ci/install_parity.sh), never in
an environment where our ``nnn`` would be imported instead: it refuses to run then.

Reads ``<data>/gallery.npy`` (n_g, d), ``<data>/refs.npy`` (n_r, d) and, if present,
``<data>/queries.npy`` (n_q, d), all float32. For the i-th (--k, --alpha) pair it writes to
``<out>/run<i>/``: ``bias.npy`` (n_g,) float32 =
alternate_weight * alignment_means (their bias convention: mean of the top-k reference scores,
weighted at search time), ``scores.npy``/``ids.npy`` (n_q, top_k) from ``NNNRanker.search``, and
``info.json`` with the imported package path and the seconds each ranker construction took (the
bias computation, from NumPy arrays, with their torch retriever ``NNNRetriever`` on the CPU or
``--gpu-id``; their FAISS CPU retriever fails with faiss-cpu >= 1.13).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--k", type=int, nargs="+", required=True)
    ap.add_argument("--alpha", type=float, nargs="+", required=True, help="one per --k")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--gpu-id", type=int, default=-1, help="CUDA device for their torch retriever")
    args = ap.parse_args()

    import nnn
    if not hasattr(nnn, "NNNRanker"):
        raise SystemExit(f"imported {nnn.__file__}, which is not nnn-retrieval; put its folder "
                         "first on PYTHONPATH")
    from nnn import NNNRanker, NNNRetriever

    if len(args.k) != len(args.alpha):
        raise SystemExit(f"give one --alpha per --k, got {len(args.k)} k and {len(args.alpha)} alpha")
    gallery = np.load(args.data / "gallery.npy")
    refs = np.load(args.data / "refs.npy")
    queries_path = args.data / "queries.npy"
    queries = np.load(queries_path) if queries_path.exists() else None
    gpu = args.gpu_id >= 0
    for i, (k, alpha) in enumerate(zip(args.k, args.alpha)):
        out = args.out / f"run{i}"
        out.mkdir(parents=True, exist_ok=True)
        seconds = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ranker = NNNRanker(NNNRetriever(gallery.shape[1], use_gpu=gpu, gpu_id=args.gpu_id),
                               gallery, refs, alternate_ks=k, batch_size=args.batch_size,
                               alternate_weight=alpha, use_gpu=gpu, gpu_id=args.gpu_id)
            seconds.append(time.perf_counter() - t0)
        means = ranker.alignment_means.cpu().numpy().reshape(-1)
        np.save(out / "bias.npy", (alpha * means).astype(np.float32))
        if queries is not None:
            scores, ids = ranker.search(queries, args.top_k)
            np.save(out / "scores.npy", np.asarray(scores, dtype=np.float32))
            np.save(out / "ids.npy", np.asarray(ids, dtype=np.int64))
        info = {"nnn_file": nnn.__file__, "k": k, "alpha": alpha, "seconds": seconds}
        (out / "info.json").write_text(json.dumps(info))

if __name__ == "__main__":
    main()
