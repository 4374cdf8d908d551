"""Results of a run and of a sweep: JSON, CSV and a printed table. All writes are atomic.

A run's results are one JSON-able dict (built by ``nnn.pipeline``)::

    {"status": "completed" | "failed", "error": str | None, "name": str,
     "overrides": ["method.k=8", ...], "method": {"name": ..., "repr": ...},
     "data": {"dataset": ..., "n_test_images": ..., ...},
     "metrics": {"baseline": {"t2i/R@1": ..., "t2i/R@1_ci_low": ..., ...},
                 "method": {...}, "delta": {"t2i/R@1": method - baseline,
                                            "t2i/R@1_ci_low": ..., ...}},  # paired CI of R@k
     "analysis": {"alpha_k": {"t2i": {"split": "test", "axes": {"alpha": [...], "k": [...]},
                               "table": [[R@1, ...], ...]}}},   # only with analysis.alpha_k
     "tuning": {"t2i": {"method": "nnn", "best": {...}, "axes": ..., "table": ...}},  # method.tune=true
     "timings_s": {"load": ..., "t2i/fit": ..., ...},
     "objective": {"metric": "t2i/R@1", "split": "tuning", "value": ...},
     "config": {... the resolved config ...}}

Metric keys name the direction (``t2i/R@1``, ``i2t/R@10``, ``t2i/hubness/kurtosis``); confidence
bounds carry a ``_ci_low`` / ``_ci_high`` suffix.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from nnn._atomic import atomic_write_json, atomic_write_text
from nnn.task import DIRECTIONS

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
SWEEP_JSON = "sweep_summary.json"
SWEEP_CSV = "sweep_summary.csv"
_CI_SUFFIXES = ("_ci_low", "_ci_high")
#: metrics shown in the printed table, per direction, in this order (R@k rows come first)
_TABLE_EXTRA = ("median_rank", "hubness/skewness", "hubness/kurtosis", "hubness/max",
                "hubness/never_retrieved", "hubness/robin_hood")
#: what ``nnn.metrics.rank_summary`` reports beside R@k and its CIs, and the statistics of
#: ``nnn.metrics.hubness_stats``: listed here (tests/test_metrics.py checks they agree) so that
#: checking a config's ``objective`` imports no torch
RANK_METRICS = ("median_rank", "mean_rank", "n_queries")
HUBNESS_METRICS = ("skewness", "kurtosis", "max", "mean", "never_retrieved", "robin_hood", "hubs")
#: decimals of every measured float in a CSV file: what the printed tables show
CSV_DECIMALS = 2
#: columns that hold hyper-parameters (grid points such as alpha = 0.125, not measurements):
#: written in full, as the shortest text that reads back as the same float
EXACT_CSV_COLUMNS = frozenset({"alpha", "k", "fraction", "beta", "beta_query", "beta_gallery",
                               "lam"})
CSV_COLUMNS = ("metric", "baseline", "baseline_ci_low", "baseline_ci_high", "method",
               "method_ci_low", "method_ci_high", "delta", "delta_ci_low", "delta_ci_high")
#: columns of alpha_k.csv: NNN's R@1 at each grid point of a direction and split
ALPHA_K_COLUMNS = ("direction", "split", "role", "alpha", "k", "R@1", "chosen")


def jsonable(obj):
    """``obj`` with NumPy scalars/arrays turned into Python values and NaN/Inf into ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # NumPy scalars and arrays
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def is_ci_key(key: str) -> bool:
    return key.endswith(_CI_SUFFIXES)


def metric_names(ks) -> list[str]:
    """The metrics a direction reports on the evaluation split with R@``ks`` (CIs left out):
    ``R@1``, ..., ``median_rank``, ..., ``hubness/skewness``, ..."""
    return [*(f"R@{k}" for k in ks), *RANK_METRICS, *(f"hubness/{n}" for n in HUBNESS_METRICS)]


def _in_order(keys: Sequence[str]) -> list[str]:
    """Metric keys by direction (``DIRECTIONS`` order), then R@k by k, then the others as
    given: a results.json read back has its keys sorted as text (i2t first, R@10 before R@5)."""
    def rank(key):
        direction, _, name = key.partition("/")
        recall = name[2:] if name.startswith("R@") and name[2:].isdigit() else None
        return (DIRECTIONS.index(direction) if direction in DIRECTIONS else len(DIRECTIONS),
                0 if recall is not None else 1, int(recall or 0))
    return sorted(keys, key=rank)  # stable: ties keep their order


def metric_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per metric (CI bounds become columns): the rows of ``results.csv``, per
    direction the recalls by k first."""
    m = results.get("metrics") or {}
    base, meth, delta = m.get("baseline", {}), m.get("method", {}), m.get("delta", {})
    rows = []
    for key in _in_order([k for k in base if not is_ci_key(k)]):
        rows.append({"metric": key, "baseline": base.get(key),
                     "baseline_ci_low": base.get(key + "_ci_low"),
                     "baseline_ci_high": base.get(key + "_ci_high"),
                     "method": meth.get(key), "method_ci_low": meth.get(key + "_ci_low"),
                     "method_ci_high": meth.get(key + "_ci_high"), "delta": delta.get(key),
                     "delta_ci_low": delta.get(key + "_ci_low"),
                     "delta_ci_high": delta.get(key + "_ci_high")})
    return rows


def _csv_cell(value, decimals: int | None = CSV_DECIMALS) -> str:
    """The text of one CSV cell: None -> "", a finite float rounded to ``decimals`` (None: in
    full), everything else ``str``. ``9.060000000000002`` -> ``9.06``; ``-0.0`` -> ``0.0``."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return repr((value if decimals is None else round(value, decimals)) + 0.0)
    return str(value)


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], *,
              decimals: int | None = CSV_DECIMALS,
              exact: Iterable[str] = EXACT_CSV_COLUMNS) -> str:
    exact = frozenset(exact)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k), None if k in exact else decimals)
                         for k in columns})
    return buf.getvalue()


def write_table_csv(path: str | Path, columns: Sequence[str],
                    rows: Iterable[Mapping[str, Any]], *, decimals: int | None = CSV_DECIMALS,
                    exact: Iterable[str] = EXACT_CSV_COLUMNS) -> Path:
    """Write ``rows`` (dicts; missing keys and None become empty cells) as CSV (atomic).

    Floats are rounded to ``decimals`` (the precision the printed tables show; results.json
    keeps full precision), except in the ``exact`` columns (hyper-parameters)."""
    return atomic_write_text(path, _csv_text(columns, rows, decimals=decimals, exact=exact))


def alpha_k_grids(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """NNN's R@1 grids over (alpha, k) held by a run's results, one dict per direction and split.

    From ``results["tuning"]`` (NNN tuned on the tuning part: role "selection", ``chosen`` =
    the selected (alpha, k)) and ``results["analysis"]["alpha_k"]`` (the evaluation split:
    role "analysis", ``chosen`` = the run's (alpha, k), which were NOT chosen on it). Each:
    ``{"direction", "split", "role", "alphas", "ks", "table" (n_alpha, n_k) nested lists,
    "chosen": (alpha, k) or None}``.
    """
    grids = []
    tuning = results.get("tuning") or {}
    params = method_params(results)
    for direction, t in tuning.items():
        if t.get("method") == "nnn" and set(t.get("axes", {})) == {"alpha", "k"}:
            grids.append({"direction": direction, "split": "tuning", "role": "selection",
                          "alphas": list(t["axes"]["alpha"]), "ks": list(t["axes"]["k"]),
                          "table": t["table"], "chosen": (t["best"]["alpha"], t["best"]["k"])})
    for direction, a in ((results.get("analysis") or {}).get("alpha_k") or {}).items():
        if direction in tuning and "alpha" in tuning[direction].get("best", {}):
            chosen = (tuning[direction]["best"]["alpha"], tuning[direction]["best"]["k"])
        elif "alpha" in params and "k" in params:
            chosen = (params["alpha"], params["k"])
        else:
            chosen = None
        grids.append({"direction": direction, "split": a["split"], "role": "analysis",
                      "alphas": list(a["axes"]["alpha"]), "ks": list(a["axes"]["k"]),
                      "table": a["table"], "chosen": chosen})
    return grids


def alpha_k_rows(grids: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Long rows (``ALPHA_K_COLUMNS``) of ``alpha_k_grids``: one per grid point."""
    rows = []
    for g in grids:
        for i, alpha in enumerate(g["alphas"]):
            for j, k in enumerate(g["ks"]):
                rows.append({"direction": g["direction"], "split": g["split"], "role": g["role"],
                             "alpha": alpha, "k": k, "R@1": g["table"][i][j],
                             "chosen": g["chosen"] is not None
                             and (float(alpha), int(k)) == (float(g["chosen"][0]),
                                                            int(g["chosen"][1]))})
    return rows


def write_results(out_dir: str | Path, results: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``results.json`` (everything, full precision) and ``results.csv`` (metric rows,
    ``CSV_DECIMALS`` decimals) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = jsonable(results)
    paths = {"json": atomic_write_json(out / RESULTS_JSON, clean)}
    paths["csv"] = atomic_write_text(out / RESULTS_CSV, _csv_text(CSV_COLUMNS, metric_rows(clean)))
    return paths


def read_results(path: str | Path) -> dict[str, Any]:
    """Load a ``results.json`` (a file or the directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_JSON
    return json.loads(p.read_text(encoding="utf-8"))


# -- reading a run's results ------------------------------------------------------------------

def metric_of(results: Mapping[str, Any], side: str, key: str) -> tuple[Any, Any, Any]:
    """(value, CI low, CI high) of metric ``key`` (``t2i/R@1``) of ``side`` ("baseline",
    "method" or "delta"); None where the run has none."""
    if side not in ("baseline", "method", "delta"):
        raise ValueError(f"side {side!r}: one of 'baseline', 'method', 'delta'")
    m = (results.get("metrics") or {}).get(side) or {}
    return m.get(key), m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")


def directions_of(results: Mapping[str, Any]) -> list[str]:
    """The directions a run evaluated (those with a baseline R@1), in ``DIRECTIONS`` order."""
    base = (results.get("metrics") or {}).get("baseline") or {}
    return [d for d in DIRECTIONS if f"{d}/R@1" in base]


def method_params(results: Mapping[str, Any]) -> dict[str, Any]:
    """The method's configured parameters (``method.params``)."""
    return dict((results.get("method") or {}).get("params") or {})


def chosen_params(results: Mapping[str, Any], direction: str) -> dict[str, Any]:
    """The parameters a run used in ``direction``: the tuned ones, else the configured ones."""
    tuned = (results.get("tuning") or {}).get(direction)
    return dict(tuned["best"]) if tuned else method_params(results)


# -- the printed table ---------------------------------------------------------------------------
def _fmt(value, ci_low=None, ci_high=None, signed=False) -> str:
    if value is None:
        return "-"
    sign = "+" if signed else ""
    text = f"{value:{sign}.2f}"
    if ci_low is not None and ci_high is not None:
        text += f" [{ci_low:{sign}.1f}, {ci_high:{sign}.1f}]"
    return text


def render_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *,
                 markdown: bool = False) -> str:
    """Rows of cells (``str`` of each) under ``header``: fixed-width text, or a Markdown table
    (``markdown``; a "|" inside a cell becomes "/")."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells (the header's), got row lengths "
                         f"{sorted({len(r) for r in rows})}")
    if markdown:
        line = lambda r: "| " + " | ".join(str(c).replace("|", "/") for c in r) + " |"  # noqa: E731
        return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def ci_level(results: Mapping[str, Any]) -> float:
    """The confidence level of a run's CIs (its ``eval.ci_level``; 0.95 where not recorded)."""
    return float((((results.get("config") or {}).get("eval") or {}).get("ci_level")) or 0.95)


def format_table(results: Mapping[str, Any]) -> str:
    """Baseline vs method per direction (R@k with CIs at the run's level, ranks, hubness of
    N_k), deltas with their paired CIs, timings."""
    meth = results.get("method") or {}
    data = results.get("data") or {}
    shown = (f"{meth.get('name', '?')} (parameters tuned per direction)" if results.get("tuning")
             else meth.get("repr", meth.get("name", "?")))
    title = (f"{results.get('name', 'run')}: {shown} vs uncorrected baseline on "
             f"{data.get('dataset', '?')}")
    lines = [title]
    if data:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in data.items() if k != "dataset"))
    for direction, tuned in (results.get("tuning") or {}).items():
        lines.append(f"  {direction}: parameters chosen on the tuning part: {tuned['best']} "
                     f"(tuning R@1 {tuned['best_score']:.2f})")
    if results.get("status") != "completed":
        lines.append(f"  status: {results.get('status')} - {results.get('error')}")
    rows_by_key = {r["metric"]: r for r in metric_rows(results)}
    directions = list(dict.fromkeys(k.split("/", 1)[0] for k in rows_by_key))
    ordered = []
    for d in directions:  # per direction: the recalls, then ranks and hubness
        ordered += [k for k in rows_by_key if k.startswith(f"{d}/R@")]
        ordered += [f"{d}/{name}" for name in _TABLE_EXTRA if f"{d}/{name}" in rows_by_key]
    if ordered:
        body = []
        for key in ordered:
            r = rows_by_key[key]
            ci = key.split("/", 1)[-1].startswith("R@")  # only recalls carry bootstrap CIs
            cells = [_fmt(r[side], r[f"{side}_ci_low"], r[f"{side}_ci_high"]) if ci
                     else _fmt(r[side]) for side in ("baseline", "method")]
            # the delta's CI is paired (same resamples for baseline and method)
            body.append([key, *cells, _fmt(r["delta"], r["delta_ci_low"], r["delta_ci_high"],
                                           signed=True)])
        level = f"{100 * ci_level(results):g}%"
        lines.append(render_table(["metric", f"baseline [{level} CI]", f"method [{level} CI]",
                                   f"delta [paired {level} CI]"], body))
    obj = results.get("objective") or {}
    if obj.get("value") is not None:
        lines.append(f"objective ({obj.get('split')} split, method): {obj.get('metric')} = "
                     f"{obj['value']:.2f}")
    timings = results.get("timings_s") or {}
    if timings:
        lines.append("wall time (s): " + ", ".join(f"{k} {timings[k]:.2f}"
                                                   for k in _stage_order(timings)))
    return "\n".join(lines)


#: the stages of a run in the order it runs them (``nnn.pipeline``, ``nnn.evaluation``)
_STAGES = ("load", "embed", "tune", "fit", "evaluate", "analysis", "objective", "total")


def _stage_order(keys) -> list[str]:
    """Timing keys (``load``, ``t2i/fit``, ``t2i/fit/baseline``, ...) in the order of a run:
    shared stages, then per direction (``DIRECTIONS`` order) tune, fit, evaluate (the method's,
    then the baseline's), analyses; the objective and the total last. A results.json read back
    has them sorted as text."""
    def rank(key):
        direction, _, stage = key.partition("/")
        if direction not in DIRECTIONS:
            direction, stage = "", key
        kind = next((i for i, s in enumerate(_STAGES) if stage.startswith(s)), len(_STAGES))
        late = kind >= _STAGES.index("objective")
        where = DIRECTIONS.index(direction) if direction else -1
        return (late, where, stage.endswith("/baseline"), kind)
    return sorted(keys, key=rank)  # stable: ties keep their order


# -- sweeps --------------------------------------------------------------------------------------
def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["method.k=8", "+x=1", "~y"]`` -> ``{"method.k": "8", "x": "1"}`` (deletions dropped)."""
    out = {}
    for item in overrides:
        if "=" not in item or item.startswith("~"):
            continue
        key, value = item.split("=", 1)
        out[key.lstrip("+")] = value
    return out


def sweep_rows(jobs: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> tuple[list[str], list[dict]]:
    """Summary rows, one per job, from ``jobs`` (each: ``job``, ``overrides``, and ``results``
    or None). Columns: job, status, the swept parameters (overrides that differ between jobs),
    the objective, then baseline/method/delta of each of ``metrics``, then the error."""
    parsed = [parse_overrides(j.get("overrides") or []) for j in jobs]
    keys = sorted({k for p in parsed for k in p})
    swept = [k for k in keys if len({p.get(k) for p in parsed}) > 1] or keys
    columns = ["job", "status", *swept, "objective"]
    for metric in metrics:
        columns += [f"{metric} baseline", f"{metric} method", f"{metric} delta"]
    columns.append("error")
    rows = []
    for job, params in zip(jobs, parsed):
        res = job.get("results") or {}
        m = res.get("metrics") or {}
        row = {"job": job.get("job"), "status": res.get("status", "missing"),
               "objective": (res.get("objective") or {}).get("value"),
               "error": res.get("error")}
        row.update({k: params.get(k) for k in swept})
        for metric in metrics:
            for part in ("baseline", "method", "delta"):
                row[f"{metric} {part}"] = (m.get(part) or {}).get(metric)
        rows.append(row)
    return columns, rows


def write_sweep_summary(out_dir: str | Path, columns: Sequence[str], rows: Sequence[Mapping]) -> dict[str, Path]:
    """``sweep_summary.csv`` (numbers to ``CSV_DECIMALS`` decimals) and ``sweep_summary.json``
    (full precision) in ``out_dir`` (the sweep directory)."""
    out = Path(out_dir)
    return {"json": atomic_write_json(out / SWEEP_JSON, jsonable({"columns": list(columns),
                                                                   "rows": list(rows)})),
            "csv": atomic_write_text(out / SWEEP_CSV, _csv_text(columns, rows))}


def _is_decimal(text: str) -> bool:
    """Whether ``text`` is a number with a fraction or exponent ("0.823", "1e-3"), not an int."""
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text for c in ".eE")


def format_sweep_table(columns: Sequence[str], rows: Sequence[Mapping]) -> str:
    """The sweep summary as a fixed-width text table (numbers to 2 decimals, deltas signed)."""
    show = [c for c in columns if c != "error"]

    def cell(v, column: str) -> str:
        if isinstance(v, str) and _is_decimal(v):  # a swept value (Optuna's are long floats)
            return f"{float(v):.4g}"
        if not isinstance(v, float):
            return "-" if v is None else str(v)
        return f"{v:+.2f}" if column.endswith(" delta") else f"{v:.2f}"

    return render_table(show, [[cell(r.get(c), c) for c in show] for r in rows])
