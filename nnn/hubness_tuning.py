"""Tuners of the neighbourhood baselines (MP, LS / NICDM, DSL) and ``tune``, which dispatches to
them or to ``nnn.tuning.tune`` for every other method.

Each of the three has one axis, its neighbourhood size k (``tuning_grid["ks"]``: NNN's k grid;
MP's without k = 1), cut at the smaller of the query bank and the tuning gallery (the k nearest
neighbours are taken on both sides). All k come from ONE fit: the bank is read once for a top-k
table of width max(ks), and each k is a ``with_params(k=)`` copy of that fit (equal to a fresh
fit with that k). The protocol is ``nnn.tuning``'s: R@1 on the tuning part only, ties to the
first k of the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

from nnn import tuning as _tuning
from nnn.data.base import EmbeddingSet
from nnn.methods import DisSimLocal, LocalScaling, MutualProximity, method_class
from nnn.task import RetrievalTask

#: the methods tuned here (their ``option``s)
NEIGHBOURHOOD_METHODS = {cls.option: cls for cls in (MutualProximity, LocalScaling, DisSimLocal)}


def tune_neighbourhood_k(method: str, tuning: EmbeddingSet, refs: EmbeddingSet,
                         direction: str = "t2i", *, ks: Sequence[int] | None = None,
                         batch_size: int = 1024, **kwargs) -> _tuning.TuningResult:
    """The k of MP, LS or DSL (``method``: any of their names) on the tuning part, from one fit.

    ``ks`` defaults to the class's ``tuning_grid["ks"]``, cut at min(query bank, tuning gallery)
    (noted); ``kwargs`` go to the constructor (e.g. ``variant="nicdm"``, ``device``).
    """
    cls = method_class(method)
    if cls.option not in NEIGHBOURHOOD_METHODS:
        raise ValueError(f"tune_neighbourhood_k tunes {sorted(NEIGHBOURHOOD_METHODS)}, got "
                         f"{method!r}; use nnn.tuning.tune for it")
    _tuning._check_fixed_kwargs(kwargs, (*cls.tuned_params, "k_max"), cls.__name__)
    task = RetrievalTask.from_sets(tuning, refs, direction)
    notes: list[str] = []
    ks = _tuning._k_grid(ks, cls.tuning_grid["ks"],
                         min(len(task.query_bank), len(task.gallery)), notes,
                         method=cls.paper_name)
    fitted = task.fit(cls(k=min(ks), k_max=max(ks), **kwargs))
    grid = _tuning._search(cls.option, task, [{"k": k} for k in ks],
                           lambda p: fitted.with_params(**p), batch_size)
    return _tuning._result(cls.option, direction, grid, {"k": ks}, kwargs, notes)


def tune(method: str, tuning: EmbeddingSet, refs: EmbeddingSet, direction: str = "t2i",
         **kwargs) -> _tuning.TuningResult:
    """``tune_neighbourhood_k`` for MP, LS and DSL, ``nnn.tuning.tune`` for the others."""
    if method_class(method).option in NEIGHBOURHOOD_METHODS:
        return tune_neighbourhood_k(method, tuning, refs, direction, **kwargs)
    return _tuning.tune(method, tuning, refs, direction, **kwargs)
