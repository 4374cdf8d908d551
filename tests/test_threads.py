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
