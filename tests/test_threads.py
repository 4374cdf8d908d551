"""``nnn._threads.one_thread_workers``: results in order, one torch thread while it runs, the
caller's count restored (also after an error), nested calls run in place."""

from __future__ import annotations

import pytest
import torch

from nnn._threads import one_thread_workers


def test_results_in_order_with_one_torch_thread():
    before = torch.get_num_threads()
    seen = one_thread_workers(lambda w: (w, torch.get_num_threads(),
                                         torch.is_inference_mode_enabled()), 3)
    assert seen == [(0, 1, True), (1, 1, True), (2, 1, True)]
    assert torch.get_num_threads() == before


def test_thread_count_restored_after_an_error():
    before = torch.get_num_threads()

    def task(w):
        if w == 1:
            raise RuntimeError("boom")
        return w

    with pytest.raises(RuntimeError, match="boom"):
        one_thread_workers(task, 2)
    assert torch.get_num_threads() == before


def test_nested_calls_run_on_the_worker():
    # a task that itself splits its work must not wait for the lock its caller holds
    out = one_thread_workers(lambda w: one_thread_workers(lambda v: (w, v), 2), 2)
    assert out == [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]


def test_gemms_on_workers_round_as_one_thread_does():
    # MKL's and OpenMP's thread counts are per thread: a worker that did not set its own could
    # run a GEMM on 1 or 2 threads from call to call and round differently (seen as a 1e-12 to
    # 2e-5 drift of QB-Norm's log-normalisers with 3 workers on 2 cores)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(5, 24, generator=gen) for _ in range(6)]
    g = torch.randn(53, 24, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = [x @ g.T for x in xs]
    finally:
        torch.set_num_threads(before)
    for workers in (2, 3):
        for _ in range(5):
            got = one_thread_workers(lambda w: [x @ g.T for x in xs[w::workers]], workers)
            for w, part in enumerate(got):
                for x_got, x_want in zip(part, want[w::workers]):
                    assert torch.equal(x_got, x_want)
