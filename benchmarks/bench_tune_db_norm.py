"""Time DBNorm's (DualDIS) grid search on the real CLIP ViT-L/14 Flickr30k embeddings.

Usage, from the repository root (PYTHONPATH picks the checkout to measure)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_tune_db_norm.py [--tuning-size 250]

The split is the pipeline's (``dataset=precomputed``: 500 training images, references = 20%
of them, a tuning part of ``--tuning-size`` images). Prints, per direction, the number of grid
points, wall and process CPU seconds (CPU time is less sensitive to other load on the machine)
and the chosen betas.
"""

from __future__ import annotations

import argparse
import time

from nnn.pipeline import load_sets
from nnn.settings import compose
from nnn.tuning import tune_db_norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuning-size", type=int, default=250)
    args = parser.parse_args()
    cfg = compose(["dataset=precomputed", "logger=none",
                   f"reference.tuning_size={args.tuning_size}"])
    _, reference, tuning = load_sets(cfg, {})
    for direction in ("t2i", "i2t"):
        wall, cpu = time.perf_counter(), time.process_time()
        res = tune_db_norm(tuning, reference, direction, dynamic=True, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{direction}: {len(res.grid)} points, wall {wall:.1f} s, CPU {cpu:.1f} s, "
              f"{1000 * cpu / len(res.grid):.0f} ms CPU/point, best {res.best} "
              f"R@1 {res.best_score:.2f}")


if __name__ == "__main__":
    main()
