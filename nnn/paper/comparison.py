"""One comparison table: our number with its 95% CI beside the paper's, and the difference.

``Comparison`` collects the cells (``add_orig`` / ``add_method`` look the paper's number up);
``comparison_markdown``, ``comparison_png`` and ``sweep_plots`` show them (CSV columns:
``COMPARE_COLUMNS``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

from nnn.plots import comparison_points, metric_vs_param
from nnn.paper.numbers import DATASET_LABELS, paper_value
from nnn.paper.runs import Run
from nnn.results import render_table

COMPARE_COLUMNS = ("setting", "refs", "paper_setting", "column", "metric", "ours", "ci_low",
                   "ci_high", "paper", "diff", "run")


def _num(x) -> int | float | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return x if isinstance(x, int) and not isinstance(x, bool) else float(x)


class Comparison:
    """Rows of one comparison table; a cell filled twice keeps the newest run (with a warning)."""

    def __init__(self, name: str):
        self.name = name
        self._rows: dict[tuple, dict] = {}
        self._mtimes: dict[tuple, float] = {}
        self.warnings: list[str] = []

    def add(self, run: Run, direction: str | None, column: str, metric: str, ours,
            ci=(None, None), *, paper: float | None = None, refs: str | None = None,
            shared: bool = False) -> None:
        """One cell. ``shared``: a value every run of the setting holds (the uncorrected
        baseline), kept once; differing values are reported."""
        setting = run.label + (f"/{direction}" if direction else "")
        paper_setting = "/".join(x for x in (run.paper_model, DATASET_LABELS.get(
            run.paper_dataset or "", None)) if x) if run.paper_model or run.paper_dataset else ""
        refs = "-" if shared else (refs if refs is not None else run.ref_dataset)
        key = (setting, refs, column, metric)
        ours = _num(ours)
        row = {"setting": setting, "refs": refs, "paper_setting": paper_setting,
               "column": column, "metric": metric, "ours": ours, "ci_low": _num(ci[0]),
               "ci_high": _num(ci[1]), "paper": paper,
               "diff": None if ours is None or paper is None else ours - paper,
               "run": str(run.dir)}
        old = self._rows.get(key)
        if old is not None:
            if shared and old["ours"] is not None and ours is not None \
                    and abs(old["ours"] - ours) < 1e-9:
                return
            self.warnings.append(f"{self.name}: {setting} {column} {metric} is in more than one "
                                 f"run ({old['run']}, {run.dir}); the newest is kept")
            if self._mtimes[key] > run.mtime:
                return
        self._rows[key] = row
        self._mtimes[key] = run.mtime

    @property
    def rows(self) -> list[dict]:
        return list(self._rows.values())


def refs_column(run: Run, method: str) -> str:
    label = DATASET_LABELS.get(run.paper_refs or "", run.ref_dataset)
    return f"{method} ({label} refs)"


def add_orig(table: Comparison, t: str, run: Run, d: str, metrics=("R@1",), param=None,
              column: str = "Orig") -> None:
    for metric in metrics:
        v, lo, hi = run.metric("baseline", f"{d}/{metric}")
        table.add(run, d, column, metric, v, (lo, hi), shared=True,
                  paper=paper_value(t, run.paper_model, run.paper_dataset, d, "Orig",
                                    param=param, metric=metric))


def add_method(table: Comparison, t: str, run: Run, d: str, column: str, *, method=None,
                metrics=("R@1",), param=None, refs=None) -> None:
    for metric in metrics:
        v, lo, hi = run.metric("method", f"{d}/{metric}")
        table.add(run, d, column, metric, v, (lo, hi), refs=refs,
                  paper=paper_value(t, run.paper_model, run.paper_dataset, d,
                                    method or run.method, run.paper_refs, param=param,
                                    metric=metric))



def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def sweep_plots(table: Comparison, out: Path, *, x_of, xlabel: str, name: str) -> list[Path]:
    """One PNG per setting: ours (and the paper's, where it has numbers) against ``x_of(column)``
    (None: the column is not a point, e.g. Orig), with the uncorrected R@1 dashed."""
    paths = []
    settings = dict.fromkeys(r["setting"] for r in table.rows)
    for setting in settings:
        rows = [r for r in table.rows if r["setting"] == setting and r["metric"] == "R@1"]
        points = [(x_of(r["column"]), r) for r in rows if x_of(r["column"]) is not None]
        if not points:
            continue
        series = {}
        for refs in dict.fromkeys(r["refs"] for _, r in points):
            pts = [(x, r) for x, r in points if r["refs"] == refs]
            series[f"ours (refs {refs})"] = ([x for x, _ in pts], [r["ours"] for _, r in pts])
            paper = [(x, r["paper"]) for x, r in pts if r["paper"] is not None]
            if paper:
                label = f"paper ({pts[0][1]['paper_setting']})"
                series[label] = ([x for x, _ in paper], [y for _, y in paper])
        orig = [r["ours"] for r in rows if r["column"] == "Orig"]
        paths.append(metric_vs_param(series, out / f"{name}_{_slug(setting)}.png", xlabel=xlabel,
                                     ylabel="R@1 (%)", baseline=orig[0] if orig else None,
                                     title=f"{setting}: R@1 against {xlabel}"))
    return paths



def _fmt(v, signed: bool = False, exact: bool = False) -> str:
    """A Markdown cell: floats to 2 decimals (``exact``: in full, for hyper-parameters)."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:+d}" if signed else str(v)
    if exact:
        return f"{v:+g}" if signed else f"{v:g}"
    return f"{v:+.2f}" if signed else f"{v:.2f}"



def comparison_markdown(table: Comparison, exact: bool = False) -> str:
    """The rows of ``table`` as Markdown; ``exact``: values are hyper-parameters, in full."""
    header = ["Setting", "Refs", "Paper setting", "Column", "Metric", "Ours [95% CI]",
              "Paper", "Ours - paper"]
    body = []
    for r in table.rows:
        ours = _fmt(r["ours"], signed=r["metric"].startswith("delta"), exact=exact)
        if r["ci_low"] is not None and r["ci_high"] is not None:
            ours += f" [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
        body.append([r["setting"], r["refs"], r["paper_setting"] or "-", r["column"],
                     r["metric"], ours, _fmt(r["paper"], exact=exact),
                     _fmt(r["diff"], signed=True, exact=exact)])
    return render_table(header, body, markdown=True)


def comparison_png(table: Comparison, path: Path, title: str) -> Path:
    """``table`` as a point plot: a row per cell (setting and column; the reference set too
    where one setting's column has several), grouped by setting, ours with its CI beside the
    paper's."""
    seen: dict[tuple, int] = {}
    for r in table.rows:
        key = (r["setting"], r["column"], r["metric"])
        seen[key] = seen.get(key, 0) + 1
    order = {s: i for i, s in enumerate(dict.fromkeys(r["setting"] for r in table.rows))}
    points = [{**r, "label": f"{r['setting']}  {r['column']}"
               + (f" [refs {r['refs']}]" if seen[(r["setting"], r["column"], r["metric"])] > 1
                  else "")}
              for r in sorted(table.rows, key=lambda r: order[r["setting"]])]  # stable
    papers = {r["paper_setting"] for r in table.rows if r["paper"] is not None}
    return comparison_points(points, path, title=title,
                             paper_label=f"paper ({papers.pop()})" if len(papers) == 1 else "paper")


def rows_markdown(columns: Sequence[str], rows: Sequence[dict]) -> str:
    """Rows (dicts) as a Markdown table of ``columns``; a "delta" column is signed."""
    signed = [c == "delta" or c.endswith(" delta") for c in columns]
    return render_table(columns, [[_fmt(r.get(c), sign) for c, sign in zip(columns, signed)]
                                  for r in rows], markdown=True)

