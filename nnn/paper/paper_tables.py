"""The comparison tables: each builds a ``Comparison`` of its runs beside the paper's numbers.

Table 1 / 2 (``build_table12``), the baselines (A6/A7), R@1/5/10 (A8-A11), the k sweep, the
reference-set size, the runtime (A5), hubness (Table 3), the chosen (alpha, k) and in- against
out-of-distribution references; ``fraction_of`` / ``k_of`` read the x of a sweep's column.
"""

from __future__ import annotations

from typing import Sequence

from nnn.paper.comparison import Comparison, add_method, add_orig, refs_column
from nnn.paper.numbers import paper_value
from nnn.paper.runs import Run


def build_table12(runs: Sequence[Run], name: str) -> Comparison:
    """Table 1 (t2i) / Table 2 (i2t): Orig, DBNorm (in-distribution refs), NNN per refs."""
    direction = "t2i" if name == "table1" else "i2t"
    table = Comparison(name)
    for run in runs:
        if direction not in run.directions():
            continue
        add_orig(table, name, run, direction)
        if run.method == "DualIS":
            add_method(table, name, run, direction, "DBNorm" if run.ref_dataset == run.dataset
                        else refs_column(run, "DBNorm"))
        elif run.method == "NNN":
            add_method(table, name, run, direction, refs_column(run, "NNN"))
    return table


def build_baselines(runs: Sequence[Run]) -> Comparison:
    """Tables A6/A7: Orig, DN, DualIS, DualDIS, NNN with in-distribution references."""
    table = Comparison("baselines")
    for run in runs:
        for d in run.directions():
            add_orig(table, "baselines", run, d)
            add_method(table, "baselines", run, d, run.method)
    return table


def build_recall(runs: Sequence[Run]) -> Comparison:
    """Tables A8-A11: R@1/5/10 with CIs, Orig and NNN per reference dataset."""
    table = Comparison("recall")
    metrics = ("R@1", "R@5", "R@10")
    for run in runs:
        for d in run.directions():
            add_orig(table, "recall", run, d, metrics)
            add_method(table, "recall", run, d, refs_column(run, run.method), metrics=metrics)
    return table


def build_k_sweep(runs: Sequence[Run]) -> Comparison:
    """k sweep (alpha = 0.75): R@1 per k, beside Orig."""
    table = Comparison("k_sweep")
    fixed = [r for r in runs if isinstance(r.params.get("k"), int)]
    table.warnings += [f"k sweep: {r.dir} left out, its k is {r.params.get('k')!r}, not a fixed "
                       "integer (a tuned or non-NNN run)" for r in runs
                       if not isinstance(r.params.get("k"), int)]
    for run in sorted(fixed, key=lambda r: r.params["k"]):
        k = run.params["k"]
        for d in run.directions():
            add_orig(table, "k_sweep", run, d)
            add_method(table, "k_sweep", run, d, f"k={k}", param=f"k={k}")
    return table


def _fraction(run: Run) -> float:
    return float((run.config.get("reference") or {}).get("fraction", float("nan")))


def build_reference_size(runs: Sequence[Run]) -> Comparison:
    """Reference-set size: R@1 with 10/20/50/100% of the training split as references."""
    table = Comparison("reference_size")
    for run in sorted(runs, key=_fraction):
        f = _fraction(run)
        for d in run.directions():
            add_orig(table, "reference_size", run, d)
            add_method(table, "reference_size", run, d, "full" if f == 1.0 else f"{f:.0%}",
                        param=f"fraction={f}")
    return table


def _backend(run: Run) -> str:
    p = run.params
    return "exact" if p.get("backend", "exact") == "exact" else f"faiss-{p.get('index', 'flat')}"


def build_runtime(runs: Sequence[Run]) -> Comparison:
    """Table A5: bias computation time (the method's fit) and R@1, exact against FAISS."""
    table = Comparison("runtime")
    times: dict[tuple, dict[str, float]] = {}
    for run in runs:
        backend = _backend(run)
        paper_backend = "exact" if backend == "exact" else "faiss"
        for d in run.directions():
            seconds = (run.results.get("timings_s") or {}).get(f"{d}/fit")
            table.add(run, d, backend, "bias time (s)", seconds,
                      paper=paper_value("runtime", run.paper_model, run.paper_dataset, d, "NNN",
                                        run.paper_refs, param=f"backend={paper_backend}",
                                        metric="bias_time_s"))
            add_method(table, "runtime", run, d, backend, param=f"backend={paper_backend}")
            times.setdefault((run.label, d), {})[paper_backend] = seconds
            times[(run.label, d)]["run"] = run
    for (_, d), t in times.items():
        if t.get("exact") and t.get("faiss"):
            run = t["run"]
            pe, pf = (paper_value("runtime", run.paper_model, run.paper_dataset, d, "NNN",
                                  run.paper_refs, param=f"backend={b}", metric="bias_time_s")
                      for b in ("exact", "faiss"))
            table.add(run, d, "exact / faiss", "speed-up (x)", t["exact"] / t["faiss"],
                      paper=pe / pf if pe and pf else None, refs=run.ref_dataset)
    return table


def build_hubness(runs: Sequence[Run]) -> Comparison:
    """Table 3: kurtosis and maximum of N_1 (text->image), Orig -> NNN, and the R@1 gain."""
    table = Comparison("hubness")
    for run in runs:
        if "t2i" not in run.directions() or run.method != "NNN":
            continue
        for metric in ("kurtosis", "max"):
            key = f"t2i/hubness/{metric}"
            table.add(run, "t2i", "Orig", f"N_1 {metric}", run.metric("baseline", key)[0],
                      shared=True, paper=paper_value("hubness", run.paper_model,
                                                     run.paper_dataset, "t2i", "Orig",
                                                     metric=metric))
            table.add(run, "t2i", "NNN", f"N_1 {metric}", run.metric("method", key)[0],
                      paper=paper_value("hubness", run.paper_model, run.paper_dataset, "t2i",
                                        "NNN", run.paper_refs, metric=metric))
        table.add(run, "t2i", "NNN", "delta R@1", run.metric("delta", "t2i/R@1")[0],
                  paper=paper_value("hubness", run.paper_model, run.paper_dataset, "t2i", "NNN",
                                    run.paper_refs, metric="delta R@1"))
    return table


def build_chosen(runs: Sequence[Run]) -> Comparison:
    """NNN's (alpha, k) chosen on the tuning part, beside the paper's choices."""
    table = Comparison("chosen")
    for run in runs:
        tuning = run.results.get("tuning") or {}
        for d, t in tuning.items():
            if t.get("method") != "nnn":
                continue
            for metric in ("alpha", "k"):
                table.add(run, d, f"NNN, tuned in {run.experiment or 'a run'}", metric,
                          t["best"][metric],
                          paper=paper_value("chosen", run.paper_model, run.paper_dataset, d,
                                            "NNN", run.paper_refs, metric=metric))
    return table


def build_ood(runs: Sequence[Run]) -> Comparison:
    """In- against out-of-distribution references: Orig and NNN per reference dataset; the
    paper's numbers are Table 1 (t2i) / Table 2 (i2t)."""
    table = Comparison("ood")
    for run in runs:
        for d in run.directions():
            t = "table1" if d == "t2i" else "table2"
            add_orig(table, t, run, d)
            kind = "in-distribution" if run.ref_dataset == run.dataset else "out-of-distribution"
            add_method(table, t, run, d, f"{refs_column(run, run.method)}, {kind}")
    return table


def fraction_of(column: str) -> float | None:
    """The reference fraction of a reference_size column ("full", "50%"); None for "Orig"."""
    if column == "full":
        return 1.0
    return float(column[:-1]) / 100 if column.endswith("%") else None


def k_of(column: str) -> float | None:
    """The k of a k_sweep column ("k=16"); None for "Orig"."""
    return float(column[2:]) if column.startswith("k=") else None
