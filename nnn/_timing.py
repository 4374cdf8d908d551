"""``timed``: add a block's wall time to a dict of stage timings (the run's ``timings_s``)."""

from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def timed(timings: dict[str, float], key: str):
    """Add the wall seconds of the ``with`` block to ``timings[key]`` (0 if absent), also when
    the block raises."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
