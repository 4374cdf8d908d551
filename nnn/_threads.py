"""Work split over one-thread workers instead of torch's own threads.

``one_thread_workers(task, workers)`` runs ``task(0), ..., task(workers - 1)`` on their own
Python threads, each with one torch thread (torch releases the GIL in its kernels). For passes
made of many small or memory-bound operations this beats torch's intra-op threads: their start
and join at every operation cost more than the work when another job holds one of the cores (a
40k-row bank pass took 20 s instead of 2.5 s on a shared 2-core machine), and some kernels
scale badly (``torch.sparse.sampled_addmm`` ran slower on two threads than on one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
#: torch's thread count is process-wide: held while workers run with it lowered, so that two
#: callers (threads of one process) do not restore each other's setting in the wrong order
_LOCK = threading.Lock()
#: ``inside`` is true on a worker thread: a nested call runs its tasks there, one by one
_STATE = threading.local()


def one_thread_workers(task: Callable[[int], T], workers: int) -> list[T]:
    """``[task(w) for w in range(workers)]``, each call in inference mode on its own thread
    while torch runs one thread per operation (``workers`` <= 1: here, with the caller's
    threads). The process's torch thread count is restored afterwards. Called from a worker
    (nested), the tasks run one after the other on that worker."""
    if workers <= 1 or getattr(_STATE, "inside", False):
        with torch.inference_mode():
            return [task(w) for w in range(max(workers, 1))]

    def run(worker: int) -> T:
        _STATE.inside = True
        # also on this thread: OpenMP's thread count and MKL's local one are per thread, and a
        # new thread's MKL (dynamic threads) could otherwise pick 1 or 2 threads for a GEMM
        # from one call to the next, and so round differently (seen with 3 workers on 2 cores)
        torch.set_num_threads(1)
        with torch.inference_mode():
            return task(worker)

    with _LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(run, range(workers)))
        finally:
            torch.set_num_threads(threads)
