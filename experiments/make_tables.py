"""Turn run outputs into the paper's tables: our number, the paper's number and the difference.

Reads every ``results.json`` under the given paths (single runs, multirun sweep directories,
or whole output trees) and writes, into ``--out``:

- ``tables.md``: one Markdown section per table;
- ``<table>.csv``: the same rows (comparison tables: setting, refs, paper_setting, column,
  metric, ours, ci_low, ci_high, paper, diff, run);
- PNGs: ``<table>.png`` per comparison table (ours with 95% CIs beside the paper's, a row per
  cell), ``reference_size_<setting>.png`` and ``k_sweep_<setting>.png`` (R@1 against the
  reference-set size / k, ours and the paper's), ``alpha_k_<n>.png`` (R@1 heat maps).

Which runs feed which table is decided by the experiment they ran (``experiment=paper_table1``
-> ``table1``, see ``SOURCES``); ``runs`` lists every run, in job order (sweep jobs 0, 1, 2, ...,
10). A run's model and evaluation dataset are matched to the paper's from its config
(``model=clip`` or ``model=open_clip`` with ViT-B-32/openai -> CLIP, ``dataset=coco`` -> COCO,
see ``paper_numbers.paper_model_of``); references from another dataset than the evaluation set
count as the paper's *other* dataset. Runs the paper has no row for (``model=none`` on
``dataset=synthetic`` or ``dataset=precomputed``) are named in one line of the report;
``--paper-model`` / ``--paper-dataset`` override the match for every run (a stand-in
comparison for such runs).

Example (offline)::

    python run.py -m experiment=paper_table1 dataset=synthetic 'dataset@reference.dataset=synthetic,synthetic_shift'
    python experiments/make_tables.py outputs/multirun/paper_table1 --paper-model CLIP \\
        --paper-dataset flickr30k --out outputs/report
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from nnn._atomic import atomic_write_text
from nnn.ablations import HUB_COUNTS_NPZ, hub_occupancy, read_hub_counts, top_hubs
from nnn.plots import alpha_k_heatmap, comparison_points, metric_vs_param
from nnn.results import RESULTS_JSON, alpha_k_grids, read_results, write_table_csv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_numbers import (DATASET_ALIASES, DATASET_LABELS, DATASETS,  # noqa: E402
                           TABLES as PAPER_TABLES, TYPICAL_R1_CI_HALF_WIDTH, paper_model_of,
                           paper_value)

log = logging.getLogger("make_tables")

#: experiments (``experiment=NAME``) whose runs feed each comparison table
SOURCES = {
    "table1": ("paper_table1",), "table2": ("paper_table2",),
    "baselines": ("paper_baselines",), "recall": ("paper_recall",),
    "k_sweep": ("paper_k_sweep",),
    "reference_size": ("paper_reference_size", "ablation_reference_size"),
    "runtime": ("paper_runtime", "ablation_backend"),
    "hubness": ("paper_hubness", "ablation_hubs"),
    "ood": ("ablation_ood_references",),
}
#: tables built from what the runs hold, whatever experiment they ran
CONTENT_TABLES = ("chosen", "alpha_k", "hubs", "runs")
ALL_TABLES = (*SOURCES, *CONTENT_TABLES)
TITLES = {**PAPER_TABLES,
          "ood": "Ablation: in-distribution against out-of-distribution references (R@1)",
          "alpha_k": "Ablation: NNN's R@1 over the alpha x k grid",
          "hubs": "Ablation: the biggest hubs and how many items have each N_k, before -> after",
          "runs": "Every run: R@1 of the uncorrected model and of the method"}
COMPARE_COLUMNS = ("setting", "refs", "paper_setting", "column", "metric", "ours", "ci_low",
                   "ci_high", "paper", "diff", "run")
DIRECTIONS = ("t2i", "i2t")


# -- runs ----------------------------------------------------------------------------------------
@dataclass
class Run:
    """One completed run and how it maps onto the paper's settings."""

    dir: Path
    results: dict
    mtime: float
    paper_model: str | None = None
    paper_dataset: str | None = None
    paper_refs: str | None = None
    label: str = field(init=False)

    def __post_init__(self):
        self.label = f"{self.model}/{self.dataset}"

    @property
    def experiment(self) -> str | None:
        return (self.results.get("choices") or {}).get("experiment")

    @property
    def model(self) -> str:
        return (self.results.get("choices") or {}).get("model") or "none"

    @property
    def dataset(self) -> str:
        return str((self.results.get("data") or {}).get("dataset", "?"))

    @property
    def ref_dataset(self) -> str:
        return str((self.results.get("data") or {}).get("reference_dataset") or self.dataset)

    @property
    def params(self) -> dict:
        return (self.results.get("method") or {}).get("params") or {}

    @property
    def method(self) -> str:
        """The paper's name of the method: NNN, DualIS, DualDIS, DN, QB-Norm, DIS, CSLS, ..."""
        name = (self.results.get("method") or {}).get("name", "?")
        dynamic = bool(self.params.get("dynamic"))
        return {"DBNorm": "DualDIS" if dynamic else "DualIS",
                "QBNorm": "DIS" if dynamic else "QB-Norm"}.get(name, name)

    @property
    def config(self) -> dict:
        return self.results.get("config") or {}

    def directions(self) -> list[str]:
        base = (self.results.get("metrics") or {}).get("baseline") or {}
        return [d for d in DIRECTIONS if f"{d}/R@1" in base]

    def metric(self, side: str, key: str) -> tuple[float | None, float | None, float | None]:
        """(value, CI low, CI high) of ``side`` ("baseline" | "method" | "delta")."""
        m = (self.results.get("metrics") or {}).get(side) or {}
        return m.get(key), m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")

    def chosen(self, direction: str) -> dict:
        """The parameters used in ``direction``: tuned ones, else the config's."""
        tuned = (self.results.get("tuning") or {}).get(direction)
        return dict(tuned["best"]) if tuned else dict(self.params)


def _other(dataset: str | None) -> str | None:
    return None if dataset is None else next(d for d in DATASETS if d != dataset)


def _natural_key(path: Path) -> tuple:
    """Sort key that orders numbered folders by number (sweep jobs 0, 1, 2, ..., 10)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``results.json`` under ``paths`` (files or directories), deduplicated, sorted with
    numbered job folders in numeric order."""
    found = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist; pass run or sweep directories "
                                    "(e.g. outputs/multirun/paper_table1) or results.json files")
        found.update([p] if p.is_file() else p.rglob(RESULTS_JSON))
    return sorted(found, key=_natural_key)


def load_runs(paths: Iterable[str | Path], *, paper_model: str | None = None,
              paper_dataset: str | None = None) -> list[Run]:
    """Completed runs under ``paths``, mapped to the paper's model / dataset / references:
    inferred from each run's config, or ``paper_model`` / ``paper_dataset`` for every run."""
    runs = []
    for path in find_results(paths):
        try:
            results = read_results(path)
        except ValueError as err:
            log.warning("skipping %s: not valid JSON (%s)", path, err)
            continue
        if results.get("status") != "completed":
            log.warning("skipping %s: status %s (%s)", path.parent, results.get("status"),
                        results.get("error"))
            continue
        run = Run(path.parent, results, path.stat().st_mtime)
        run.paper_model = paper_model or paper_model_of(run.model, run.config.get("model"))
        run.paper_dataset = paper_dataset or DATASET_ALIASES.get(run.dataset)
        if run.ref_dataset == run.dataset:
            run.paper_refs = run.paper_dataset
        else:
            run.paper_refs = DATASET_ALIASES.get(run.ref_dataset, _other(run.paper_dataset))
        runs.append(run)
    return runs


# -- comparison tables ---------------------------------------------------------------------------
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


def _refs_column(run: Run, method: str) -> str:
    label = DATASET_LABELS.get(run.paper_refs or "", run.ref_dataset)
    return f"{method} ({label} refs)"


def _add_orig(table: Comparison, t: str, run: Run, d: str, metrics=("R@1",), param=None,
              column: str = "Orig") -> None:
    for metric in metrics:
        v, lo, hi = run.metric("baseline", f"{d}/{metric}")
        table.add(run, d, column, metric, v, (lo, hi), shared=True,
                  paper=paper_value(t, run.paper_model, run.paper_dataset, d, "Orig",
                                    param=param, metric=metric))


def _add_method(table: Comparison, t: str, run: Run, d: str, column: str, *, method=None,
                metrics=("R@1",), param=None, refs=None) -> None:
    for metric in metrics:
        v, lo, hi = run.metric("method", f"{d}/{metric}")
        table.add(run, d, column, metric, v, (lo, hi), refs=refs,
                  paper=paper_value(t, run.paper_model, run.paper_dataset, d,
                                    method or run.method, run.paper_refs, param=param,
                                    metric=metric))


def build_table12(runs: Sequence[Run], name: str) -> Comparison:
    """Table 1 (t2i) / Table 2 (i2t): Orig, DBNorm (in-distribution refs), NNN per refs."""
    direction = "t2i" if name == "table1" else "i2t"
    table = Comparison(name)
    for run in runs:
        if direction not in run.directions():
            continue
        _add_orig(table, name, run, direction)
        if run.method == "DualIS":
            _add_method(table, name, run, direction, "DBNorm" if run.ref_dataset == run.dataset
                        else _refs_column(run, "DBNorm"))
        elif run.method == "NNN":
            _add_method(table, name, run, direction, _refs_column(run, "NNN"))
    return table


def build_baselines(runs: Sequence[Run]) -> Comparison:
    """Tables A6/A7: Orig, DN, DualIS, DualDIS, NNN with in-distribution references."""
    table = Comparison("baselines")
    for run in runs:
        for d in run.directions():
            _add_orig(table, "baselines", run, d)
            _add_method(table, "baselines", run, d, run.method)
    return table


def build_recall(runs: Sequence[Run]) -> Comparison:
    """Tables A8-A11: R@1/5/10 with CIs, Orig and NNN per reference dataset."""
    table = Comparison("recall")
    metrics = ("R@1", "R@5", "R@10")
    for run in runs:
        for d in run.directions():
            _add_orig(table, "recall", run, d, metrics)
            _add_method(table, "recall", run, d, _refs_column(run, run.method), metrics=metrics)
    return table


def build_k_sweep(runs: Sequence[Run]) -> Comparison:
    """k sweep (alpha = 0.75): R@1 per k, beside Orig."""
    table = Comparison("k_sweep")
    for run in sorted(runs, key=lambda r: int(r.params.get("k", 0))):
        k = int(run.params.get("k", 0))
        for d in run.directions():
            _add_orig(table, "k_sweep", run, d)
            _add_method(table, "k_sweep", run, d, f"k={k}", param=f"k={k}")
    return table


def _fraction(run: Run) -> float:
    return float((run.config.get("reference") or {}).get("fraction", float("nan")))


def build_reference_size(runs: Sequence[Run]) -> Comparison:
    """Reference-set size: R@1 with 10/20/50/100% of the training split as references."""
    table = Comparison("reference_size")
    for run in sorted(runs, key=_fraction):
        f = _fraction(run)
        for d in run.directions():
            _add_orig(table, "reference_size", run, d)
            _add_method(table, "reference_size", run, d, "full" if f == 1.0 else f"{f:.0%}",
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
            _add_method(table, "runtime", run, d, backend, param=f"backend={paper_backend}")
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
            _add_orig(table, t, run, d)
            kind = "in-distribution" if run.ref_dataset == run.dataset else "out-of-distribution"
            _add_method(table, t, run, d, f"{_refs_column(run, run.method)}, {kind}")
    return table


BUILDERS = {"table1": lambda runs: build_table12(runs, "table1"),
            "table2": lambda runs: build_table12(runs, "table2"),
            "baselines": build_baselines, "recall": build_recall, "k_sweep": build_k_sweep,
            "reference_size": build_reference_size, "runtime": build_runtime,
            "hubness": build_hubness, "ood": build_ood, "chosen": build_chosen}


# -- the other tables ----------------------------------------------------------------------------
def runs_table(runs: Sequence[Run]) -> tuple[list[str], list[dict]]:
    """Every run: experiment, data, references, method and its parameters, R@1 per direction."""
    columns = ["run", "experiment", "dataset", "refs", "model", "method", "direction",
               "parameters", "R@1 baseline", "R@1 method", "delta"]
    rows = []
    for run in runs:
        for d in run.directions():
            b, m, delta = (run.metric(s, f"{d}/R@1")[0] for s in ("baseline", "method", "delta"))
            chosen = run.chosen(d)
            params = ", ".join(f"{k}={v}" for k, v in chosen.items()
                               if k in ("alpha", "k", "beta", "beta_query", "beta_gallery", "lam",
                                        "backend", "index"))
            rows.append({"run": str(run.dir), "experiment": run.experiment or "-",
                         "dataset": run.dataset, "refs": run.ref_dataset, "model": run.model,
                         "method": run.method, "direction": d,
                         "parameters": params + (" (tuned)" if run.results.get("tuning") else ""),
                         "R@1 baseline": b, "R@1 method": m, "delta": delta})
    return columns, rows


def alpha_k_table(runs: Sequence[Run], out: Path) -> tuple[list[str], list[dict]]:
    """Per run with a test-split grid (``analysis.alpha_k``, e.g. experiment=ablation_alpha_k),
    direction and split: the best grid point and R@1 at the chosen (alpha, k); the heat maps
    are re-drawn as ``alpha_k_<n>.png`` in ``out``."""
    columns = ["run", "direction", "split", "role", "best (alpha, k) on this split",
               "best R@1", "chosen (alpha, k)", "R@1 at chosen", "heat map"]
    rows = []
    with_grid = [r for r in runs if (r.results.get("analysis") or {}).get("alpha_k")
                 or r.experiment == "ablation_alpha_k"]
    for n, run in enumerate(r for r in with_grid if alpha_k_grids(r.results)):
        grids = alpha_k_grids(run.results)
        png = alpha_k_heatmap(grids, out / f"alpha_k_{n}.png")
        for g in grids:
            cells = [(v, a, k) for a, row in zip(g["alphas"], g["table"])
                     for k, v in zip(g["ks"], row) if v is not None]
            best = max(cells, key=lambda c: c[0])  # first of equal values: grid order
            at_chosen = None
            if g["chosen"] is not None and g["chosen"][0] in g["alphas"] \
                    and g["chosen"][1] in g["ks"]:
                at_chosen = g["table"][g["alphas"].index(g["chosen"][0])][
                    g["ks"].index(g["chosen"][1])]
            role = ("selection (chooses alpha, k)" if g["role"] == "selection"
                    else "ANALYSIS ONLY (chooses nothing)")
            rows.append({"run": str(run.dir), "direction": g["direction"], "split": g["split"],
                         "role": role, "best (alpha, k) on this split": f"({best[1]:g}, {best[2]})",
                         "best R@1": best[0],
                         "chosen (alpha, k)": "-" if g["chosen"] is None
                         else f"({g['chosen'][0]:g}, {g['chosen'][1]})",
                         "R@1 at chosen": at_chosen, "heat map": png.name})
    return columns, rows


def _hub_analysis(run: Run, top: int = 10) -> dict | None:
    """``{direction: {"top": rows, "occupancy": rows}}`` from results.json or the counts file."""
    hubs = (run.results.get("analysis") or {}).get("hubs")
    if hubs:
        return hubs
    if (run.dir / HUB_COUNTS_NPZ).is_file():
        counts = read_hub_counts(run.dir)
        return {d: {"top": top_hubs(b, a, top=min(top, len(b))), "occupancy": hub_occupancy(b, a)}
                for d, (b, a) in counts.items()}
    return None


def hubs_tables(runs: Sequence[Run], top: int = 10) -> dict[str, tuple[list[str], list[dict]]]:
    """``hubs_top`` (the biggest hubs, N_1 before -> after) and ``hubs_occupancy`` (items per
    N_1 bin, before -> after), for the runs of the hub experiments and runs that computed them
    (``analysis.top_hubs``)."""
    chosen = [r for r in runs if r.experiment in SOURCES["hubness"]
              or (r.results.get("analysis") or {}).get("hubs")]
    top_cols = ["run", "direction", "rank", "item", "N_1 before", "N_1 after",
                "share before (%)", "share after (%)"]
    occ_cols = ["run", "direction", "N_1", "items before", "items after"]
    top_rows, occ_rows = [], []
    for run in chosen:
        hubs = _hub_analysis(run, top)
        for d, h in (hubs or {}).items():
            top_rows += [{"run": str(run.dir), "direction": d, "rank": r["rank"],
                          "item": r["item"], "N_1 before": r["before"], "N_1 after": r["after"],
                          "share before (%)": r["before_share"],
                          "share after (%)": r["after_share"]} for r in h["top"][:top]]
            occ_rows += [{"run": str(run.dir), "direction": d, "N_1": r["bin"],
                          "items before": r["before"], "items after": r["after"]}
                         for r in h["occupancy"]]
    return {"hubs_top": (top_cols, top_rows), "hubs_occupancy": (occ_cols, occ_rows)}


# -- plots ---------------------------------------------------------------------------------------
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


def _fraction_of(column: str) -> float | None:
    if column == "full":
        return 1.0
    return float(column[:-1]) / 100 if column.endswith("%") else None


def _k_of(column: str) -> float | None:
    return float(column[2:]) if column.startswith("k=") else None


# -- Markdown ------------------------------------------------------------------------------------
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


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines)


def comparison_markdown(table: Comparison, exact: bool = False) -> str:
    """The rows of ``table`` as Markdown; ``exact``: values are hyper-parameters, in full."""
    header = ["Setting", "Refs", "Paper setting", "Column", "Metric", "Ours [95% CI]",
              "Paper", "Ours - paper"]
    body = []
    for r in table.rows:
        ours = _fmt(r["ours"], exact=exact)
        if r["ci_low"] is not None and r["ci_high"] is not None:
            ours += f" [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
        body.append([r["setting"], r["refs"], r["paper_setting"] or "-", r["column"],
                     r["metric"], ours, _fmt(r["paper"], exact=exact),
                     _fmt(r["diff"], signed=True, exact=exact)])
    return _md_table(header, body)


def comparison_png(table: Comparison, path: Path) -> Path:
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
    return comparison_points(points, path, title=TITLES[table.name],
                             paper_label=f"paper ({papers.pop()})" if len(papers) == 1 else "paper")


def rows_markdown(columns: Sequence[str], rows: Sequence[dict]) -> str:
    return _md_table(columns, [[_fmt(r.get(c)) for c in columns] for r in rows])


def unmatched_note(runs: Sequence[Run]) -> str | None:
    """One line naming the runs the paper has no numbers for, or None when every run has a row."""
    missing = [r for r in runs if r.paper_model is None or r.paper_dataset is None]
    if not missing:
        return None
    kinds = ", ".join(f"model={m} on dataset={d}"
                      for m, d in dict.fromkeys((r.model, r.dataset) for r in missing))
    return (f"No paper numbers for {len(missing)} of {len(runs)} runs ({kinds}): the paper has "
            f"no row for this model and data; to compare with one of its rows anyway, pass e.g. "
            f"--paper-model CLIP --paper-dataset flickr30k.")


NOTES = {
    "table1": "Orig: the uncorrected model of every run. DBNorm = DualIS with in-distribution "
              "references. Parameters chosen on the tuning part of the training split.",
    "runtime": "Bias time: the method's fit (top-k reference search and biases) on this "
               "machine; the paper's on one V100. Speed-up: exact time / FAISS time.",
    "alpha_k": "The tuning split's grid chooses (alpha, k). The test split's grid is an "
               "analysis of how R@1 depends on them; it is never used to choose.",
    "hubness": "N_1: how many test captions have each test image as their top-1.",
    "ood": "Paper numbers: Table 1 (t2i) / Table 2 (i2t), NNN with Flickr30k or COCO references.",
}
_CI_NOTE = ("Typical 95% CI half-widths of the paper's R@1: "
            + ", ".join(f"{DATASET_LABELS[d]} {'IR' if k == 't2i' else 'TR'} +-{v}"
                        for (d, k), v in TYPICAL_R1_CI_HALF_WIDTH.items()) + ".")


def make_report(paths: Sequence[str | Path], out: str | Path, *,
                tables: Sequence[str] = ALL_TABLES, paper_model: str | None = None,
                paper_dataset: str | None = None) -> dict[str, Path]:
    """Build the tables from the runs under ``paths`` into ``out``; returns {name: file}."""
    bad = [t for t in tables if t not in ALL_TABLES]
    if bad:
        raise ValueError(f"unknown tables {bad}; choose from {list(ALL_TABLES)}")
    if paper_dataset is not None and paper_dataset not in DATASETS:
        raise ValueError(f"--paper-dataset must be one of {list(DATASETS)}, got {paper_dataset!r}")
    runs = load_runs(paths, paper_model=paper_model, paper_dataset=paper_dataset)
    if not runs:
        raise FileNotFoundError(f"no completed runs (results.json with status 'completed') "
                                f"under {[str(p) for p in paths]}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    unmatched = unmatched_note(runs)
    if unmatched:
        log.warning("%s", unmatched)
    sections = [f"# Results against the paper\n\n{len(runs)} runs from "
                f"{', '.join(str(p) for p in paths)}. Ours: this project's runs, with 95% "
                f"bootstrap CIs; paper: Chowdhury et al. (EMNLP 2024). {_CI_NOTE}"
                + (f"\n\n{unmatched}" if unmatched else "")]
    warnings: list[str] = []
    for name in tables:
        if name in SOURCES or name == "chosen":
            pool = runs if name == "chosen" else [r for r in runs if r.experiment in SOURCES[name]]
            table = BUILDERS[name](pool)
            if not table.rows:
                continue
            warnings += table.warnings
            exact = name == "chosen"  # alpha and k: grid points, shown in full
            written[name] = write_table_csv(out / f"{name}.csv", COMPARE_COLUMNS, table.rows,
                                            exact=COMPARE_COLUMNS if exact else ())
            body = comparison_markdown(table, exact=exact)
            if not exact:
                written[f"{name}_png"] = comparison_png(table, out / f"{name}.png")
                body += f"\n\n![{name}]({name}.png)"
            if name == "reference_size":
                body += "".join(f"\n\n![{p.stem}]({p.name})" for p in sweep_plots(
                    table, out, x_of=_fraction_of, xlabel="reference fraction", name=name))
            if name == "k_sweep":
                body += "".join(f"\n\n![{p.stem}]({p.name})" for p in sweep_plots(
                    table, out, x_of=_k_of, xlabel="k", name=name))
        else:
            if name == "runs":
                parts = {"runs": runs_table(runs)}
            elif name == "alpha_k":
                parts = {"alpha_k": alpha_k_table(runs, out)}
            else:
                parts = hubs_tables(runs)
            parts = {k: v for k, v in parts.items() if v[1]}
            if not parts:
                continue
            body = ""
            for key, (columns, rows) in parts.items():
                written[key] = write_table_csv(out / f"{key}.csv", columns, rows)
                body += ("\n\n" if body else "") + rows_markdown(columns, rows)
        note = NOTES.get("table1" if name == "table2" else name, "")
        sections.append(f"## {name}: {TITLES[name]}\n\n" + (f"{note}\n\n" if note else "") + body)
    if warnings:
        sections.append("## Warnings\n\n" + "\n".join(f"- {w}" for w in warnings))
    written["markdown"] = atomic_write_text(out / "tables.md", "\n\n".join(sections) + "\n")
    for w in warnings:
        log.warning("%s", w)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Tables of our results beside the paper's numbers (Markdown + CSV + PNG).",
        epilog="Example: python experiments/make_tables.py outputs/multirun/paper_table1 "
               "--paper-model CLIP --paper-dataset flickr30k --out outputs/report")
    parser.add_argument("paths", nargs="+", help="run directories, sweep directories or "
                        "results.json files (searched recursively)")
    parser.add_argument("--out", default="outputs/report", help="output directory "
                        "(default: outputs/report)")
    parser.add_argument("--tables", nargs="+", default=list(ALL_TABLES), choices=ALL_TABLES,
                        metavar="NAME", help=f"tables to build (default: all with runs): "
                        f"{', '.join(ALL_TABLES)}")
    parser.add_argument("--paper-model", default=None,
                        help="compare every run with this model of the paper, e.g. CLIP "
                             "(default: each run's own, from its config: model=clip, siglip, "
                             "blip_*, albef_*, or their checkpoints; none for model=none)")
    parser.add_argument("--paper-dataset", default=None, choices=DATASETS,
                        help="compare every run with the paper's numbers on this evaluation "
                             "set (default: each run's dataset=coco / flickr30k; none for "
                             "synthetic or precomputed data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        written = make_report(args.paths, args.out, tables=args.tables,
                              paper_model=args.paper_model, paper_dataset=args.paper_dataset)
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 1
    log.info("wrote %s", ", ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
