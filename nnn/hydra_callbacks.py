"""Hydra callback that summarises a multirun sweep.

After every job (``on_job_end``) and once more at the end (``on_multirun_end``) it reads each
job's ``.hydra/overrides.yaml`` and ``results.json`` under the sweep directory and writes
``sweep_summary.csv`` / ``sweep_summary.json`` there: one row per job with the swept parameters,
its status (a failed job is listed with its error), the objective and baseline/method/delta of
each summary metric. When a parameter ending in ``alpha`` was swept it also plots each metric
against α (one line per setting of the other swept parameters), e.g. ``t2i_R1_vs_alpha.png``.

Summarising after every job (under a file lock, as joblib workers run jobs in parallel) keeps
the summary complete even when Hydra stops the sweep with a failed job's exception, in which
case ``on_multirun_end`` is never called.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

from filelock import FileLock
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nnn.plots import metric_vs_param
from nnn.results import (RESULTS_JSON, format_sweep_table, read_results, sweep_rows,
                         write_sweep_summary)

log = logging.getLogger(__name__)


def _job_sort_key(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Jobs of a sweep directory: ``{"job", "dir", "overrides", "results"}`` (results or None)."""
    jobs = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"),
                                 key=lambda p: _job_sort_key(p.parent.parent)):
        job_dir = overrides_file.parent.parent
        results = None
        if (job_dir / RESULTS_JSON).is_file():
            try:
                results = read_results(job_dir)
            except ValueError as err:  # being written by another process: atomic, so rare
                log.warning("could not read %s: %s", job_dir / RESULTS_JSON, err)
        jobs.append({"job": job_dir.name, "dir": str(job_dir),
                     "overrides": list(OmegaConf.load(overrides_file)), "results": results})
    return jobs


def _plot_against(param: str, columns: Sequence[str], rows: Sequence[dict], metrics: Sequence[str],
                  sweep_dir: Path) -> list[Path]:
    others = [c for c in columns[2:columns.index("objective")] if c != param]
    paths = []
    for metric in metrics:
        series: dict[str, tuple[list[float], list[float]]] = {}
        baselines = []
        for r in rows:
            y, x = r.get(f"{metric} method"), r.get(param)
            if y is None or x is None:
                continue
            label = ", ".join(f"{o}={r.get(o)}" for o in others) or metric
            series.setdefault(label, ([], []))
            series[label][0].append(float(x))
            series[label][1].append(float(y))
            if r.get(f"{metric} baseline") is not None:
                baselines.append(r[f"{metric} baseline"])
        if not series:
            continue
        stem = f"{metric.replace('@', '')}_vs_{param.rsplit('.', 1)[-1]}"  # t2i_R1_vs_alpha
        name = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")
        baseline = baselines[0] if baselines and len(set(baselines)) == 1 else None
        paths.append(metric_vs_param(series, sweep_dir / f"{name}.png",
                                     xlabel=param, ylabel=metric, baseline=baseline,
                                     title=f"{metric} against {param} ({sweep_dir.name})"))
    return paths


def summarise_sweep(sweep_dir: str | Path, metrics: Sequence[str] = ("t2i/R@1", "i2t/R@1"),
                    plot_suffix: str = "alpha") -> tuple[list[str], list[dict]]:
    """Write the summary (and α plots) of the sweep in ``sweep_dir``; returns its columns and rows."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        return [], []
    columns, rows = sweep_rows(jobs, metrics)
    write_sweep_summary(sweep_dir, columns, rows)
    for param in [c for c in columns[2:columns.index("objective")] if c.endswith(plot_suffix)]:
        try:
            _plot_against(param, columns, rows, metrics, sweep_dir)
        except ValueError as err:  # non-numeric α values, e.g. from a typo; the table is written
            log.warning("could not plot the sweep against %s: %s", param, err)
    return columns, rows


class SweepSummary(Callback):
    """Writes ``sweep_summary.{csv,json}`` (and α plots) into the sweep directory of a multirun.

    metrics: the metric keys summarised per job (baseline, method, delta).
    """

    def __init__(self, metrics: Sequence[str] = ("t2i/R@1", "i2t/R@1")):
        self.metrics = list(metrics)

    def _update(self, config: DictConfig, final: bool) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        with FileLock(str(sweep_dir / ".sweep_summary.lock")):
            columns, rows = summarise_sweep(sweep_dir, self.metrics)
        if final and rows:
            failed = [r["job"] for r in rows if r["status"] != "completed"]
            log.info("sweep summary (%s):\n%s", sweep_dir, format_sweep_table(columns, rows))
            if failed:
                log.warning("jobs %s did not complete; see their results.json / log files", failed)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            self._update(config, final=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._update(config, final=True)
