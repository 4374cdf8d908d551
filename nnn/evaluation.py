"""A fitted method against the uncorrected baseline on one retrieval task, as a run reports it.

``compare(task, method, settings, timings)`` fits the baseline (``Identity``, the plain dot
product) and ``method`` on the task's gallery and banks and measures both on its queries: R@k with
bootstrap CIs, median/mean rank, hubness statistics of N_k over the gallery, and the gain's CI
from the same resamples (paired). Keys name the direction (``t2i/R@1``, ``i2t/hubness/skewness``).
The settings are plain values (``EvalSettings``); ``nnn.pipeline`` fills them from ``cfg.eval``.
``objective`` is the number a sweeper gets, measured on the tuning part when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nnn._timing import timed
from nnn.methods import Identity
from nnn.data.base import EmbeddingSet
from nnn.metrics import hubness_stats, k_occurrence, paired_delta, rank_summary, recall_at_k
from nnn.results import is_ci_key
from nnn.task import DIRECTIONS, RetrievalTask

#: results["objective"]["role"] of a sweep job whose objective is measured on the test split
OBJECTIVE_ANALYSIS = "analysis"
#: ``EvalSettings.resample``: t2i resamples images with all their captions, or queries alone
RESAMPLE = ("image", "query")


@dataclass(frozen=True)
class EvalSettings:
    """How a task is measured: R@``ks``; ``n_boot`` bootstrap resamples seeded by ``seed`` for
    CIs at ``ci_level``, resampling by ``resample``; N_``hubness_k``; ``batch_size`` queries at a
    time; the methods run on ``device``."""

    ks: tuple[int, ...] = (1, 5, 10)
    n_boot: int = 1000
    ci_level: float = 0.95
    resample: str = "image"
    batch_size: int = 1024
    hubness_k: int = 1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.resample not in RESAMPLE:
            raise ValueError(f"eval.resample={self.resample!r}: use image (resample images with "
                             "all their captions) or query (resample queries independently)")


@dataclass
class Comparison:
    """``compare``'s result: flat metrics of the baseline and the method (``dir/...``), the
    paired CIs of their differences (``dir/R@k_ci_low``, ...), and N_k (n_g,) of both."""

    baseline: dict[str, float]
    method: dict[str, float]
    delta_ci: dict[str, float]
    counts: tuple[np.ndarray, np.ndarray]


def bootstrap_groups(task: RetrievalTask, resample: str) -> np.ndarray | None:
    """The bootstrap's resampling units: "image" resamples text->image captions by their image
    (all 5 together); "query" (and image->text) resamples queries."""
    return task.caption_to_image if resample == "image" and task.direction == "t2i" else None


def evaluate(task: RetrievalTask, method, settings: EvalSettings, timings: dict[str, float],
             tag: str = "") -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Fit ``method`` on ``task``; returns (flat metrics ``dir/...``, N_k counts (n_g,), ranks
    (n_q,)). Times go to ``timings`` as ``dir/fit{tag}`` and ``dir/evaluate{tag}``."""
    s = settings
    with timed(timings, f"{task.direction}/fit{tag}"):
        task.fit(method)
    with timed(timings, f"{task.direction}/evaluate{tag}"):
        ranks = task.ranks(method, batch_size=s.batch_size)
        summary = rank_summary(ranks, ks=list(s.ks), groups=bootstrap_groups(task, s.resample),
                               n_boot=s.n_boot, seed=s.seed, level=s.ci_level)
        counts = k_occurrence(method, task.queries, k=s.hubness_k, batch_size=s.batch_size)
        summary.update({f"hubness/{k}": v
                        for k, v in hubness_stats(counts, k=s.hubness_k).items()})
    return {f"{task.direction}/{k}": v for k, v in summary.items()}, counts, ranks


def compare(task: RetrievalTask, method, settings: EvalSettings,
            timings: dict[str, float]) -> Comparison:
    """The baseline and ``method`` on ``task`` (module docstring)."""
    s = settings
    b, b_counts, b_ranks = evaluate(task, Identity(device=s.device), s, timings, "/baseline")
    m, m_counts, m_ranks = evaluate(task, method, s, timings)
    # the gain's CI from the same resamples as both CIs (paired): significant if it excludes 0
    paired = paired_delta(b_ranks, m_ranks, ks=list(s.ks),
                          groups=bootstrap_groups(task, s.resample), n_boot=s.n_boot,
                          seed=s.seed, level=s.ci_level)
    delta_ci = {f"{task.direction}/{k}": v for k, v in paired.items() if is_ci_key(k)}
    return Comparison(b, m, delta_ci, (b_counts, m_counts))


def deltas(base: dict[str, float], meth: dict[str, float]) -> dict[str, float]:
    """method - baseline for each metric both have (CIs and query counts excluded)."""
    return {k: meth[k] - base[k] for k in base
            if not is_ci_key(k) and not k.endswith("n_queries") and k in meth}


def objective(metric: str, test_metrics: dict[str, float], *, eval_split: str,
              tuning: EmbeddingSet | None, reference: EmbeddingSet, make_method, tuned: dict,
              batch_size: int = 1024, multirun: bool = False) -> dict[str, Any]:
    """The number a sweeper optimises, ``metric`` (``t2i/R@1``), as results.json records it.

    On the tuning part when there is one (from the tuner's R@1 where it has it, else the method
    ``make_method(direction)`` fitted on it); else on the test split from ``test_metrics``,
    labelled ``role: "analysis"`` in a sweep (``multirun``): a grid over the test split
    describes, it must not choose (said once per sweep by ``nnn.hydra_callbacks``).
    """
    direction, _, name = metric.partition("/")
    if tuning is None:
        if metric not in test_metrics:
            raise ValueError(f"objective={metric!r} is not among the metrics "
                             f"{sorted(k for k in test_metrics if not is_ci_key(k))}")
        out = {"metric": metric, "split": eval_split, "value": test_metrics[metric]}
        if multirun:
            out["role"] = OBJECTIVE_ANALYSIS
        return out
    if direction not in DIRECTIONS or not name.startswith("R@") or not name[2:].isdigit():
        raise ValueError(f"objective={metric!r}: on the tuning part the objective is a recall, "
                         "e.g. t2i/R@1 or i2t/R@5")
    if name == "R@1" and direction in tuned:
        value = tuned[direction].best_score
    else:
        task = RetrievalTask.from_sets(tuning, reference, direction)
        ranks = task.ranks(task.fit(make_method(direction)), batch_size=batch_size)
        value = recall_at_k(ranks, [int(name[2:])])[name]
    return {"metric": metric, "split": "tuning", "value": value}
