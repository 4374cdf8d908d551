"""Hyper-parameter tuning without test leakage: grids are scored on a tuning split, never on test.

Protocol (paper-facts.md, "Method"): inside the *training* split, a reference part (the
references / banks) and a disjoint tuning part the size of the test split are drawn
(``nnn.data.splits.reference_and_tuning_sets``). Each method's grid is scored by R@1 on the
tuning part, the best point is kept, and only then is the method fitted on the test gallery
with the same references. The tuners below receive the tuning and reference sets and nothing
else, so a test embedding cannot reach them.

API::

    refs, tuning = reference_and_tuning_sets(train, fraction=0.2, tuning_size=len(test.image))
    result = tune("nnn", tuning, refs, direction="t2i")     # or tune_nnn / tune_qb_norm / ...
    result.best          # {"alpha": 0.75, "k": 128}
    result.best_score    # R@1 (percent) on the tuning split
    result.grid          # [{"alpha": .., "k": .., "R@1": ..}, ...] in evaluation order
    result.table, result.axes   # R@1 as an array over the named axes (NaN = not evaluated)
    method = RetrievalTask.from_sets(test, refs, "t2i").fit(result.estimator())
    ranks = RetrievalTask.from_sets(test, refs, "t2i").ranks(method)

Directions: ``nnn.task.RetrievalTask`` (t2i: captions retrieve images; i2t: the mirror image).

Grids (defaults: each class's ``tuning_grid``, the paper's values in ``nnn.methods.grids``):

- NNN: alpha x k, from ONE fit. NNN is fitted once on the tuning gallery with k = the largest k
  of the grid; every (alpha, k) then reuses its top-k reference table (``NNN.bias_grid``, the
  biases of ``NNN.with_params`` copies), and each query block's similarities are computed once
  for all points (``nnn.ablations.nnn_recall_grid``), so neither the reference nor the query
  similarities are computed per grid point. The default k grid is cut at
  the number of references (with a note); an explicit k above it is an error.
- QB-Norm: one beta axis, the union of the coarse grid and both dense ranges, plus 0.
- DBNorm: stages of product grids, coarse (beta_query, beta_gallery) in the coarse grid (plus 0)
  squared, then the dense ranges (plus 0) in both assignments to the banks
  (``grids.DB_NORM_STAGES``);
  the best point of all evaluated ones wins, and ``stages`` / ``notes`` say which stage (so
  which dense assignment) held it. ``table`` spans the union of the values (NaN where not
  evaluated). 1,319 distinct points.
- QB-Norm and DBNorm also from ONE fit: a bank's log-normaliser depends only on (bank, beta)
  and its activation set only on the bank, so the fit streams each bank once for all the betas
  of its axis (``beta_grid`` / ``beta_*_grid``) and every grid point is a ``with_params`` copy
  (2 bank passes, not 2 per point). The raw similarities of each block of tuning queries are
  computed once and every grid point is scored from them (``_beta_search``), so a point costs a
  few passes over an (n_q, n_g) block, no matrix product. Results equal fresh fits.
- DN: one lambda axis (the paper fixes lambda = 0.5; tuning it is our extension).
- CSLS: one k axis, NNN's k grid (CSLS is not in the paper's tables; tuning k is our extension),
  one fit per k.
- MP, LS / NICDM, DSL (scikit-hubness's reductions, our extension): one k axis (their class's
  ``tuning_grid["ks"]``), cut at the smaller of the query bank and the tuning gallery (the k
  nearest neighbours are taken on both sides), from ONE fit with a top-k table of width
  max(ks): each k is a ``with_params(k=)`` copy, equal to a fresh fit with that k.

A beta of 0 switches a factor off; all betas 0 is the raw similarity (``Identity``). Ties
between grid points go to the one evaluated first (grid order), so results are deterministic.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from nnn._arrays import check_grid, check_non_negative, check_positive_int
from nnn._threads import one_thread_workers
from nnn.ablations import nnn_recall_grid
from nnn.data.base import EmbeddingSet
from nnn.methods import (CSLS, DN, NNN, DBNorm, DisSimLocal, Identity, LocalScaling,
                         MutualProximity, QBNorm, method_class)
from nnn.metrics import relevant_block
from nnn.task import RetrievalTask

log = logging.getLogger(__name__)

#: constructor keywords every method (Identity included) accepts
_RUNTIME_KWARGS = ("batch_size", "device", "normalize")


# -- results -----------------------------------------------------------------------------------
@dataclass
class TuningResult:
    """The outcome of one grid search.

    best: the chosen parameters; best_score: their R@1 (percent) on the tuning split; grid: one
    dict per evaluated point (its parameters and ``"R@1"``), in evaluation order; table: R@1 as
    an array whose axes are named, in order, by ``axes`` (name -> values; NaN = not evaluated);
    method_kwargs: the fixed constructor keywords (e.g. ``dynamic``); notes: adjustments made
    (e.g. a k grid cut at the reference size) and, for staged grids, which stage won; stages:
    for staged grids (DBNorm), stage name -> {"best": its best parameters, "R@1": their R@1,
    "chosen": whether the overall best point is its best} (empty otherwise).
    """

    method: str
    direction: str
    best: dict
    best_score: float
    grid: list[dict]
    table: np.ndarray
    axes: dict[str, list]
    method_kwargs: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stages: dict[str, dict] = field(default_factory=dict)

    def estimator(self, **overrides):
        """An unfitted method with the best parameters (``overrides`` replace constructor keywords)."""
        return make_estimator(self.method, self.best, **{**self.method_kwargs, **overrides})

    def to_dict(self) -> dict:
        """JSON-able summary (NaN cells of ``table`` become None)."""
        table = np.where(np.isnan(self.table), None, self.table).tolist()
        return {"method": self.method, "direction": self.direction, "best": dict(self.best),
                "best_score": self.best_score, "grid": [dict(p) for p in self.grid],
                "axes": {k: list(v) for k, v in self.axes.items()}, "table": table,
                "method_kwargs": dict(self.method_kwargs), "notes": list(self.notes),
                "stages": {k: dict(v) for k, v in self.stages.items()}}


def make_estimator(method: str, params: dict, **kwargs):
    """Unfitted method ``method`` (any name ``nnn.methods.method_class`` knows) with its
    ``tuned_params`` from ``params`` and the fixed ``kwargs``.

    All tuned values 0 for a ``zero_is_identity`` method (QB-Norm / DBNorm betas) give
    ``Identity`` (raw similarity) with the runtime keywords only.
    """
    cls = method_class(method)
    tuned = {name: params[name] for name in cls.tuned_params}
    if cls.zero_is_identity and not any(tuned.values()):
        return Identity(**{k: v for k, v in kwargs.items() if k in _RUNTIME_KWARGS})
    return cls(**tuned, **kwargs)


# -- grid checks -------------------------------------------------------------------------------
def _check_finite(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _k_grid(ks, default: Sequence[int], task: RetrievalTask, notes: list[str],
            method: str = "NNN", both_sides: bool = False) -> list[int]:
    """``ks`` checked against the largest usable k; None: ``default`` cut there (noted).

    The limit is the number of references (``task.query_bank``) and, with ``both_sides`` (the
    method also averages each query's k nearest gallery items), the tuning gallery too."""
    limits = [(len(task.query_bank), f"the number of references ({len(task.query_bank)}) in "
               f"the {task.direction} query bank")]
    if both_sides:
        limits.append((len(task.gallery), f"the tuning gallery ({len(task.gallery)} items)"))
    limit, what = min(limits, key=lambda x: x[0])
    if ks is None:
        grid = [k for k in default if k <= limit]
        if len(grid) < len(default):
            note = (f"k grid cut at {what}: k in {grid} "
                    f"(dropped {[k for k in default if k > limit]})")
            log.info("%s tuning: %s", method, note)
            notes.append(note)
        return grid
    grid = check_grid(ks, "ks", check_positive_int)
    too_big = [k for k in grid if k > limit]
    if too_big:
        nearest = ("averages the k most similar references" if not both_sides else
                   "uses k nearest neighbours on both sides (a gallery item's among the "
                   "references, a query's among the gallery)")
        raise ValueError(f"ks {too_big} exceed {what}; {method} {nearest}, so use "
                         f"k <= {limit} (ks=None cuts the paper's grid automatically)")
    return grid


def _check_fixed_kwargs(kwargs: dict, tuned: tuple[str, ...], cls: str) -> None:
    clash = sorted(set(kwargs) & set(tuned))
    if clash:
        raise ValueError(f"{clash} are set by the tuner, so they cannot be fixed {cls} keywords; "
                         "pass the values to try as the tuner's grid instead")


def _best(grid: list[dict]) -> dict:
    """First grid point with the highest R@1."""
    return max(grid, key=lambda p: p["R@1"])  # max keeps the first of equal keys


def _table(grid: list[dict], axes: dict[str, list]) -> np.ndarray:
    table = np.full([len(v) for v in axes.values()], np.nan)
    pos = {name: {v: i for i, v in enumerate(vals)} for name, vals in axes.items()}
    for p in grid:
        table[tuple(pos[name][p[name]] for name in axes)] = p["R@1"]
    return table


def _result(method, direction, grid, axes, method_kwargs, notes) -> TuningResult:
    best = _best(grid)
    params = {k: v for k, v in best.items() if k != "R@1"}
    log.info("%s tuning (%s): best %s with R@1 %.2f on the tuning split (%d grid points)",
             method, direction, params, best["R@1"], len(grid))
    return TuningResult(method, direction, params, float(best["R@1"]), grid,
                        _table(grid, axes), axes, dict(method_kwargs), notes)


def _search(method: str, task: RetrievalTask, points: list[dict], estimator_for,
            batch_size: int) -> list[dict]:
    """R@1 of the fitted ``estimator_for(p)`` for every point p, in order."""
    grid = []
    for p in tqdm(points, desc=f"tune {method}", unit="point", leave=False, disable=None):
        grid.append({**p, "R@1": task.recall_at_1(estimator_for(p), batch_size=batch_size)})
    return grid


def _fresh_fits(method: str, task: RetrievalTask, method_kwargs: dict):
    """p -> ``make_estimator(method, p)`` fitted on ``task`` (one fit per point)."""
    return lambda p: task.fit(make_estimator(method, p, **method_kwargs))


def _tuner_keywords(cls) -> tuple[str, ...]:
    """The constructor keywords the tuner sets: the tuned ones and their fit grids."""
    return (*cls.tuned_params, *cls.fit_grid_params.values())


def _beta_search(method: str, task: RetrievalTask, points: list[dict], method_kwargs: dict,
                 batch_size: int) -> list[dict]:
    """R@1 of a QBNorm / DBNorm at every beta point p, in order, from ONE fit.

    The fit's beta grids hold every beta > 0 of each axis, so each bank is streamed once; each
    point is a ``with_params`` copy (all-zero points: the raw similarity, ``Identity``). The raw
    similarities of a block of ``batch_size`` tuning queries (and each query's top-1, the DIS
    gate) are computed once, by ``Identity`` on the same gallery, and every point scores the
    block from them (``_score_sims``, the method's own scoring after its matrix product, into
    one reused buffer, with the block's gate groups and sign-log terms shared by all points:
    ``_sims_context``), so the scores equal those of fresh fits bit for bit. On the CPU the
    points are dealt to ``torch.get_num_threads()`` one-thread workers (point i to worker
    i mod w: ``one_thread_workers``; hit counts do not depend on it). The block's rows
    are sorted by gate key first, so that each gate group is a slice (row order changes no
    hit). A hit is counted as ``first_relevant_rank`` == 1 defines it, without the rank:
    the best relevant score is above every non-relevant one (``_count_hits``).
    """
    first = next((p for p in points if any(p.values())), None)
    cls = method_class(method)
    identity = task.fit(make_estimator(method, {k: 0.0 for k in cls.tuned_params},
                                       **method_kwargs))
    models, fitted = [None] * len(points), None
    if first is not None:
        grids = {grid: sorted({p[name] for p in points if p[name] > 0})
                 for name, grid in cls.fit_grid_params.items()}
        fitted = task.fit(make_estimator(method, first, **grids, **method_kwargs))
        models = [fitted.with_params(**p) if any(p.values()) else None for p in points]
    n_q, n_g = len(task.queries), len(task.gallery)
    hits = np.zeros(len(points), dtype=np.int64)
    workers = min(torch.get_num_threads(), len(points)) if identity.device_.type == "cpu" else 1
    starts = range(0, n_q, check_positive_int(batch_size, "batch_size"))
    for start in tqdm(starts, desc=f"tune {method}", unit="block", leave=False, disable=None):
        stop = min(start + batch_size, n_q)
        s = torch.from_numpy(identity.score(task.queries[start:stop])).to(identity.device_)
        rel_rows, rel_cols = np.nonzero(relevant_block(task.direction, task.caption_to_image,
                                                       start, stop, n_g))
        rel_rows, rel_cols = (torch.from_numpy(x).to(s.device) for x in (rel_rows, rel_cols))
        top1 = s.argmax(dim=1)
        key = None if fitted is None else fitted._gate_key(top1)
        if key is not None:   # rows sorted by gate key: each gate group is a slice
            order = torch.argsort(key, stable=True)
            s, top1 = s[order], top1[order]
            rel_rows = torch.argsort(order)[rel_rows]
        context = None if fitted is None else fitted._sims_context(s, top1)
        raw_hits = _count_hits(s.clone(), rel_rows, rel_cols)   # every all-zero point

        def score(worker: int, s=s, top1=top1, context=context, rel=(rel_rows, rel_cols)):
            buffer, out = torch.empty_like(s), {}
            for i in range(worker, len(models), workers):
                if models[i] is not None:
                    scores = models[i]._score_sims(s, top1, out=buffer, context=context)
                    out[i] = _count_hits(scores, *rel)
            return out

        for part in one_thread_workers(score, workers):
            for i, h in part.items():
                hits[i] += h
        hits[[i for i, m in enumerate(models) if m is None]] += raw_hits
    return [{**p, "R@1": 100.0 * h / n_q} for p, h in zip(points, hits)]


def _count_hits(scores: torch.Tensor, rel_rows: torch.Tensor, rel_cols: torch.Tensor) -> int:
    """How many rows of ``scores`` (b, n_g) have rank 1 as ``nnn.metrics.first_relevant_rank``
    defines it: a relevant item (the pairs ``rel_rows``, ``rel_cols``; every row has one) scores
    strictly above every non-relevant one (ties count against the query). ``scores`` is
    overwritten (relevant entries set to -inf)."""
    best = torch.full((len(scores),), -math.inf, dtype=scores.dtype, device=scores.device)
    best.scatter_reduce_(0, rel_rows, scores[rel_rows, rel_cols], "amax")
    scores[rel_rows, rel_cols] = -math.inf
    return int((best > scores.amax(dim=1)).sum())


# -- tuners ------------------------------------------------------------------------------------
def tune_nnn(tuning: EmbeddingSet, refs: EmbeddingSet, direction: str = "t2i", *,
             alphas: Sequence[float] | None = None, ks: Sequence[int] | None = None,
             batch_size: int = 1024, **nnn_kwargs) -> TuningResult:
    """NNN's alpha x k grid from one fit (``table`` is R@1[alpha, k]).

    ``alphas``/``ks`` default to ``NNN.tuning_grid`` (k cut at the reference size);
    ``nnn_kwargs`` go to the ``NNN`` constructor (e.g. ``backend``, ``device``).
    """
    if nnn_kwargs.get("k_max", 0) is None:   # "no extra table width": the tuner sets it
        nnn_kwargs.pop("k_max")
    _check_fixed_kwargs(nnn_kwargs, (*NNN.tuned_params, "k_max"), "NNN")
    task = RetrievalTask.from_sets(tuning, refs, direction)
    notes: list[str] = []
    alphas = check_grid(NNN.tuning_grid["alphas"] if alphas is None else alphas, "alphas",
                        check_non_negative)
    ks = _k_grid(ks, NNN.tuning_grid["ks"], task, notes)
    # one fit with a top-k table of width max(ks), and each query block's similarities computed
    # once for every grid point (the R@1 of separate fits, ties included: nnn_recall_grid)
    table = nnn_recall_grid(task, alphas=alphas, ks=ks, batch_size=batch_size, **nnn_kwargs)
    grid = [{"alpha": a, "k": k, "R@1": float(table[i, j])}
            for i, a in enumerate(alphas) for j, k in enumerate(ks)]
    return _result("nnn", direction, grid, {"alpha": alphas, "k": ks}, nnn_kwargs, notes)


def tune_qb_norm(tuning: EmbeddingSet, refs: EmbeddingSet, direction: str = "t2i", *,
                 betas: Sequence[float] | None = None, batch_size: int = 1024,
                 **qb_kwargs) -> TuningResult:
    """QB-Norm's beta (default ``QBNorm.tuning_grid``; 0 = raw similarity), from one fit (one
    pass over the query bank for all betas).

    ``qb_kwargs`` go to ``QBNorm`` (e.g. ``dynamic=True`` for DIS).
    """
    _check_fixed_kwargs(qb_kwargs, _tuner_keywords(QBNorm), "QBNorm")
    task = RetrievalTask.from_sets(tuning, refs, direction)
    betas = check_grid(QBNorm.tuning_grid["betas"] if betas is None else betas, "betas",
                       check_non_negative)
    points = [{"beta": b} for b in betas]
    grid = _beta_search("qb_norm", task, points, qb_kwargs, batch_size)
    return _result("qb_norm", direction, grid, {"beta": betas}, qb_kwargs, [])


def tune_db_norm(tuning: EmbeddingSet, refs: EmbeddingSet, direction: str = "t2i", *,
                 stages=None, batch_size: int = 1024, **db_kwargs) -> TuningResult:
    """DBNorm's (beta_query, beta_gallery): product grids stage by stage; a point shared by two
    stages is evaluated once (and belongs to the first). All points come from one fit: one pass
    over each bank for all the betas of its axis.

    ``stages``: a mapping name -> (beta_query values, beta_gallery values), or a sequence of such
    pairs (named "stage 0", ...); None: ``DBNorm.tuning_grid`` (coarse, then the dense ranges in both
    assignments to the banks). ``stages`` of the result gives each stage's best point and which
    stage holds the chosen one (also in ``notes``). ``table`` is R@1[beta_query, beta_gallery]
    over the union of each axis' values. ``db_kwargs`` go to ``DBNorm`` (e.g. ``dynamic=True``
    for DualDIS, ``gate``).
    """
    _check_fixed_kwargs(db_kwargs, _tuner_keywords(DBNorm), "DBNorm")
    task = RetrievalTask.from_sets(tuning, refs, direction)
    stages = DBNorm.tuning_grid["stages"] if stages is None else stages
    if not stages:
        raise ValueError("stages is empty; pass at least one (beta_query values, beta_gallery "
                         "values) pair, or None for the paper's stages")
    if not isinstance(stages, Mapping):
        stages = {f"stage {i}": stage for i, stage in enumerate(stages)}
    points, owner = [], {}   # owner: (bq, bg) -> the first stage holding it
    members: dict[str, list[tuple[float, float]]] = {}
    for name, stage in stages.items():
        if len(stage) != 2:
            raise ValueError(f"stage {name!r} must be a (beta_query values, beta_gallery "
                             f"values) pair, got {stage!r}")
        bqs = check_grid(stage[0], f"stage {name!r} beta_query values", check_non_negative)
        bgs = check_grid(stage[1], f"stage {name!r} beta_gallery values", check_non_negative)
        members[name] = [(bq, bg) for bq in bqs for bg in bgs]
        for bq, bg in members[name]:
            if (bq, bg) not in owner:
                owner[bq, bg] = name
                points.append({"beta_query": bq, "beta_gallery": bg})
    grid = _beta_search("db_norm", task, points, db_kwargs, batch_size)
    axes = {"beta_query": sorted({p["beta_query"] for p in points}),
            "beta_gallery": sorted({p["beta_gallery"] for p in points})}
    result = _result("db_norm", direction, grid, axes, db_kwargs, [])
    r1 = {(p["beta_query"], p["beta_gallery"]): p["R@1"] for p in grid}
    chosen = (result.best["beta_query"], result.best["beta_gallery"])
    for name, pts in members.items():
        best = max(pts, key=r1.__getitem__)   # max keeps the first of equal keys (grid order)
        result.stages[name] = {"best": {"beta_query": best[0], "beta_gallery": best[1]},
                               "R@1": r1[best], "chosen": owner[chosen] == name}
    result.notes.append(f"chosen point {dict(result.best)} from stage {owner[chosen]!r}; best per "
                        "stage: " + ", ".join(f"{n!r} {v['best']} R@1 {v['R@1']:.2f}"
                                              for n, v in result.stages.items()))
    log.info("db_norm tuning (%s): %s", direction, result.notes[-1])
    return result


def tune_dn(tuning: EmbeddingSet, refs: EmbeddingSet, direction: str = "t2i", *,
            lams: Sequence[float] | None = None, batch_size: int = 1024,
            **dn_kwargs) -> TuningResult:
    """DN's lambda (default ``DN.tuning_grid``; the paper fixes 0.5), one fit per value."""
    _check_fixed_kwargs(dn_kwargs, DN.tuned_params, "DN")
    task = RetrievalTask.from_sets(tuning, refs, direction)
    lams = check_grid(DN.tuning_grid["lams"] if lams is None else lams, "lams", _check_finite)
    grid = _search("dn", task, [{"lam": v} for v in lams], _fresh_fits("dn", task, dn_kwargs),
                   batch_size)
    return _result("dn", direction, grid, {"lam": lams}, dn_kwargs, [])


def tune_csls(tuning: EmbeddingSet, refs: EmbeddingSet, direction: str = "t2i", *,
              ks: Sequence[int] | None = None, batch_size: int = 1024,
              **csls_kwargs) -> TuningResult:
    """CSLS's k (default ``CSLS.tuning_grid``, NNN's k grid, cut at the smaller of the query bank and the
    tuning gallery: CSLS averages the k nearest neighbours on both sides), one fit per k.

    ``csls_kwargs`` go to ``CSLS`` (e.g. ``device``).
    """
    _check_fixed_kwargs(csls_kwargs, CSLS.tuned_params, "CSLS")
    task = RetrievalTask.from_sets(tuning, refs, direction)
    notes: list[str] = []
    ks = _k_grid(ks, CSLS.tuning_grid["ks"], task, notes, method="CSLS", both_sides=True)
    grid = _search("csls", task, [{"k": k} for k in ks], _fresh_fits("csls", task, csls_kwargs),
                   batch_size)
    return _result("csls", direction, grid, {"k": ks}, csls_kwargs, notes)


def tune_neighbourhood_k(method: str, tuning: EmbeddingSet, refs: EmbeddingSet,
                         direction: str = "t2i", *, ks: Sequence[int] | None = None,
                         batch_size: int = 1024, **kwargs) -> TuningResult:
    """The k of MP, LS or DSL (``method``: any of their names) on the tuning part, from one fit.

    ``ks`` defaults to the class's ``tuning_grid["ks"]``, cut at min(query bank, tuning gallery)
    (noted); ``kwargs`` go to the constructor (e.g. ``variant="nicdm"``, ``device``).
    """
    cls = method_class(method)
    if cls not in NEIGHBOURHOOD_METHODS:
        raise ValueError(f"tune_neighbourhood_k tunes "
                         f"{sorted(c.option for c in NEIGHBOURHOOD_METHODS)}, got {method!r}; "
                         "use tune for it")
    _check_fixed_kwargs(kwargs, (*cls.tuned_params, "k_max"), cls.__name__)
    task = RetrievalTask.from_sets(tuning, refs, direction)
    notes: list[str] = []
    ks = _k_grid(ks, cls.tuning_grid["ks"], task, notes, method=cls.paper_name, both_sides=True)
    fitted = task.fit(cls(k=min(ks), k_max=max(ks), **kwargs))
    grid = _search(cls.option, task, [{"k": k} for k in ks],
                   lambda p: fitted.with_params(**p), batch_size)
    return _result(cls.option, direction, grid, {"k": ks}, kwargs, notes)


#: the methods ``tune_neighbourhood_k`` tunes
NEIGHBOURHOOD_METHODS = (MutualProximity, LocalScaling, DisSimLocal)
#: ``option`` of the method class -> its tuner; Identity (no hyper-parameters) is absent
TUNERS = {NNN.option: tune_nnn, QBNorm.option: tune_qb_norm, DBNorm.option: tune_db_norm,
          DN.option: tune_dn, CSLS.option: tune_csls,
          **{cls.option: functools.partial(tune_neighbourhood_k, cls.option)
             for cls in NEIGHBOURHOOD_METHODS}}


def grid_keywords(method: str) -> tuple[str, ...]:
    """The grids that ``tune`` takes for ``method`` (any name ``method_class`` knows; NNN:
    ``alphas``, ``ks``): its tuner's keyword-only parameters but ``batch_size``; () for a method
    without hyper-parameters."""
    tuner = TUNERS.get(method_class(method).option)
    if tuner is None:
        return ()
    return tuple(p.name for p in inspect.signature(tuner).parameters.values()
                 if p.kind is p.KEYWORD_ONLY and p.name != "batch_size")


def tune(method: str, tuning: EmbeddingSet, refs: EmbeddingSet, direction: str = "t2i",
         **kwargs) -> TuningResult:
    """Dispatch to ``tune_<method>`` (``TUNERS``; ``method``: any name ``method_class`` knows);
    ``kwargs`` are that tuner's keywords."""
    cls = method_class(method)
    if not cls.tuned_params:
        raise ValueError(f"method {method!r} has no hyper-parameters to tune; tunable methods "
                         f"are {sorted(TUNERS)}")
    return TUNERS[cls.option](tuning, refs, direction, **kwargs)
