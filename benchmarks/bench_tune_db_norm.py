"""Time DBNorm's (DualDIS) or NNN's full tuning grid per direction, the pipeline's split (not a timed test).

Usage, from the repository root (PYTHONPATH picks the checkout to measure)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_tune_db_norm.py [--tuning-size 250]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_tune_db_norm.py --dataset synthetic \\
        --tuning-size 500 --baseline-path /tmp/before --rounds 2
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_tune_db_norm.py --method nnn \
        --dataset synthetic --tuning-size 1000

``--dataset precomputed`` (default): the real CLIP ViT-L/14 Flickr30k embeddings, 500 training
images, references = 20% of them, a tuning part of ``--tuning-size`` images (at most 400).
``--dataset synthetic``: the offline default data (5,000 training images with 5 captions each:
1,000 reference images / 5,000 captions), e.g. 500 tuning images / 2,500 captions, the size the
issue's "53 s per direction" was measured at. ``--method nnn`` times NNN's alpha x k grid (110
points, k up to 512) instead of DBNorm's 1,319 betas. Each measurement runs in a fresh subprocess;
``--baseline-path DIR`` also runs it with ``PYTHONPATH=DIR`` (e.g. the code before a change),
alternating with this checkout round by round, so load from other jobs hits both alike. Prints,
per direction, the number of grid points, wall and process CPU seconds (CPU time is less
sensitive to other load on the machine), the chosen betas and a digest of the whole R@1 grid
(equal digests: equal R@1 at every point).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from _checkouts import add_arguments, checkouts, run_json


def measure(args) -> list[dict]:
    """Tune both directions once (in this process) and return one record per direction."""
    import torch

    from nnn.pipeline import load_sets
    from nnn.settings import compose
    from nnn.tuning import tune

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose([f"dataset={args.dataset}", "logger=none",
                   f"reference.tuning_size={args.tuning_size}"])
    _, reference, tuning = load_sets(cfg, {})
    out = []
    for direction in ("t2i", "i2t"):
        wall, cpu = time.perf_counter(), time.process_time()
        options = {"dynamic": True, "progress": False} if args.method == "db_norm" else {}
        res = tune(args.method, tuning, reference, direction, **options)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        digest = hashlib.sha1(json.dumps([p["R@1"] for p in res.grid]).encode()).hexdigest()
        out.append({"direction": direction, "points": len(res.grid), "wall_s": round(wall, 2),
                    "cpu_s": round(cpu, 2), "threads": torch.get_num_threads(),
                    "best": res.best, "R@1": res.best_score, "grid_sha1": digest[:12]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="db_norm", choices=["db_norm", "nnn"])
    parser.add_argument("--dataset", default="precomputed", choices=["precomputed", "synthetic"])
    parser.add_argument("--tuning-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    add_arguments(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    for _ in range(args.rounds):
        for code, path in checkouts(args):
            for r in run_json(__file__, ["--child"], path):
                print(f"{code}: {r['direction']}: {r['points']} points, wall {r['wall_s']:.1f} s, "
                      f"CPU {r['cpu_s']:.1f} s, {r['threads']} threads, best {r['best']} "
                      f"R@1 {r['R@1']:.2f}, grid {r['grid_sha1']}", flush=True)

if __name__ == "__main__":
    main()
