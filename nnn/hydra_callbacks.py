"""Hydra callbacks: the checks before the first job (``Preflight``) and the summary of a sweep
(``SweepSummary``).

``Preflight`` refuses, before any job runs, a run or sweep that cannot work: an output folder
that cannot be created or written (``paths.output_root``, ``NNN_OUTPUT_DIR``), a sweeper that
selects parameters (Optuna) without a tuning part, the SLURM launcher where SLURM is absent, and
a W&B API key in the config (``logger.settings.api_key``: refused before Hydra writes the config
to ``.hydra/``). It ends the process with the user error's one line (Hydra would only warn about
an exception).

``SweepSummary`` summarises a multirun sweep: after every job (``on_job_end``) and once more
at the end (``on_multirun_end``) it reads each job's ``.hydra/overrides.yaml`` and
``results.json`` under the sweep directory and writes ``sweep_summary.csv`` /
``sweep_summary.json`` there: one row per job with the swept parameters, its status (a failed
job is listed with its error), the objective and baseline/method/delta of each summary metric.
For every swept parameter named in ``plot_params`` (by its last dotted part: ``method.alpha``,
``method.k``, ``reference.fraction``) it also plots each metric against it (one line per
setting of the other swept parameters, their values rounded to 3 significant digits; one that
takes more than ``MAX_SERIES`` values, such as an Optuna interval, makes no lines of its own),
e.g. ``t2i_R1_vs_alpha.png`` or ``t2i_R1_vs_fraction.png`` (R@1 against the reference-set size).

At the end of the sweep the summary table and these plots also go to the experiment logger
(``cfg.logger``) as one extra run, ``<name>-summary`` (job type ``sweep-summary``), in the W&B
group of the sweep's jobs; its config names the best job and its swept parameters, its scalars
the number of jobs, of failed ones and the best objective.

Summarising after every job (under a file lock, as joblib workers run jobs in parallel) keeps
the summary complete even when Hydra stops the sweep with a failed job's exception, in which
case ``on_multirun_end`` is never called. A job that fails with a user error does not stop a
grid sweep (``run.py`` records it and returns NaN): the sweep then ends with the summary and one
line naming the failed jobs, exit code 1. A selecting sweeper (Optuna) records the failed trial
and stops, unless its ``max_failure_rate`` allows failures.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from filelock import FileLock
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from hydra.utils import instantiate

from nnn.config_dir import OUTPUT_DIR_REMEDY, TUNING_AUTO
from nnn.errors import explained_os_errors, full_error
from nnn.loggers import check_settings, sweep_group
from nnn.reporting import create_logger
from nnn.results import (RESULTS_JSON, SWEEP_CSV, format_sweep_table, read_results, sweep_rows,
                         write_sweep_summary)

log = logging.getLogger(__name__)

#: the SLURM commands that ``hydra/launcher=submitit_slurm`` (submitit) runs
SLURM_COMMANDS = ("sbatch", "srun")


def selecting_sweeper(hydra_cfg: DictConfig) -> str | None:
    """The class of the sweeper of ``hydra_cfg`` (Hydra's config) when it *selects* parameters
    by the objective (Optuna, Nevergrad, ...: any but Hydra's grid, ``BasicSweeper``)."""
    target = str(OmegaConf.select(hydra_cfg, "sweeper._target_", default="") or "")
    return None if not target or target.endswith(".BasicSweeper") else target


def check_tuning_part(sweeper: str | None, tuning_size) -> None:
    """``ValueError`` when a selecting ``sweeper`` would measure its objective on the test
    split: ``reference.tuning_size=0`` holds no tuning part out."""
    if sweeper is not None and tuning_size in (0, "0"):
        raise ValueError(f"the sweeper {sweeper} chooses parameters by the objective, which must "
                         "not be measured on the test split, but reference.tuning_size=0: use "
                         f"reference.tuning_size={TUNING_AUTO} (default), 'test' or a number")


def check_launcher(launcher_cfg: DictConfig) -> None:
    """``ValueError`` when the launcher is submitit's SLURM one and SLURM's commands are not on
    this machine (submitit would fail with a traceback)."""
    if not str(launcher_cfg.get("_target_", "")).endswith(".SlurmLauncher"):
        return
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        raise ValueError(f"hydra/launcher=submitit_slurm submits the jobs to SLURM, but no "
                         f"{' or '.join(missing)} is found on this machine (PATH): run from a "
                         "SLURM login node, or use hydra/launcher=joblib (parallel jobs here) "
                         "or hydra/launcher=submitit_local")


def make_output_dir(path: str | Path) -> None:
    """Create the output folder ``path`` of a run or sweep (as Hydra would next) and check that
    it can be written; else an ``OSError`` naming it and what to do."""
    with explained_os_errors("create or write the output folder", path, OUTPUT_DIR_REMEDY):
        Path(path).mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def _refuse_unless(check) -> None:
    """``check()``, which reads the config itself (an interpolation is resolved here:
    ``name=${foo}`` fails in ``hydra.run.dir``); a user error it raises, or an interpolation
    that cannot be resolved, ends the process with its one line, exit code 1
    (``HYDRA_FULL_ERROR=1``: after its traceback). As ``SystemExit``: Hydra turns an exception
    of a callback into a warning and goes on."""
    try:
        check()
    except (ValueError, OSError, InterpolationResolutionError) as err:
        if full_error():
            traceback.print_exc()
        raise SystemExit(f"Error: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    """``err``'s message on one line; OmegaConf's first line with the key it names (its
    further lines list the key and the node's types)."""
    if isinstance(err, InterpolationResolutionError):
        return (f"{str(err).splitlines()[0]} (resolving {err.full_key}): correct the "
                "interpolation ${...} in the config or on the command line")
    return " ".join(str(err).split())


class Preflight(Callback):
    """The checks before the first job (module docstring): a refusal ends the process with one
    line on stderr and exit code 1, before anything runs (or is created: the sweep folder is
    made last)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_unless(lambda: check_settings(OmegaConf.select(config, "logger.settings")))
        _refuse_unless(lambda: make_output_dir(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_unless(lambda: check_settings(OmegaConf.select(config, "logger.settings")))
        _refuse_unless(lambda: check_tuning_part(selecting_sweeper(config.hydra),
                                                 config.reference.tuning_size))
        _refuse_unless(lambda: check_launcher(config.hydra.launcher))
        _refuse_unless(lambda: make_output_dir(config.hydra.sweep.dir))


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


#: a swept parameter with more values than this makes no lines of its own in the sweep plots
#: (an Optuna interval: every trial another value); its points share the other parameters' lines
MAX_SERIES = 8


def _label_value(value) -> str:
    """A swept value (the text of its override) as a line's label shows it: a fraction to 3
    significant digits (an Optuna alpha of 0.6354821990083570 reads 0.635), whole numbers and
    words as they are."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:g}" if number.is_integer() else f"{number:.3g}"


def sweep_series(rows: Sequence[dict], param: str, others: Sequence[str], metric: str
                 ) -> dict[str, tuple[list[float], list[float]]]:
    """{label: (values of ``param``, ``metric`` of the method)} over the summary ``rows``: one
    series per setting of the ``others`` swept parameters (``_label_value``), leaving out those
    with more than ``MAX_SERIES`` settings; rows without the value or the metric are skipped."""
    settings = {o: {_label_value(r.get(o)) for r in rows} for o in others}
    grouped = [o for o in others if len(settings[o]) <= MAX_SERIES]
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        y, x = r.get(f"{metric} method"), r.get(param)
        if y is None or x is None:
            continue
        label = ", ".join(f"{o}={_label_value(r.get(o))}" for o in grouped) or metric
        xs, ys = series.setdefault(label, ([], []))
        xs.append(float(x))
        ys.append(float(y))
    return series


def _plot_against(param: str, columns: Sequence[str], rows: Sequence[dict], metrics: Sequence[str],
                  sweep_dir: Path) -> list[Path]:
    from nnn.plots import metric_vs_param  # matplotlib: only when a sweep is plotted

    others = [c for c in columns[2:columns.index("objective")] if c != param]
    paths = []
    for metric in metrics:
        series = sweep_series(rows, param, others, metric)
        if not series:
            continue
        baselines = {r[f"{metric} baseline"] for r in rows
                     if r.get(f"{metric} baseline") is not None}
        stem = f"{metric.replace('@', '')}_vs_{param.rsplit('.', 1)[-1]}"  # t2i_R1_vs_alpha
        name = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")
        baseline = baselines.pop() if len(baselines) == 1 else None
        paths.append(metric_vs_param(series, sweep_dir / f"{name}.png",
                                     xlabel=param, ylabel=metric, baseline=baseline,
                                     title=f"{metric} against {param} ({sweep_dir.name})"))
    return paths


#: the summary column saying where each job's objective was measured: "tuning" (a selection may
#: use it) or "test (analysis)" (a grid over the test split describes; it must not choose)
OBJECTIVE_SPLIT = "objective split"


def _objective_split(results: dict[str, Any] | None) -> str | None:
    obj = (results or {}).get("objective") or {}
    if not obj.get("split"):
        return None
    return f"{obj['split']} ({obj['role']})" if obj.get("role") else str(obj["split"])


#: swept parameters (last dotted part) plotted against by default
PLOT_PARAMS = ("alpha", "k", "fraction")


def summarise_sweep(sweep_dir: str | Path, metrics: Sequence[str] = ("t2i/R@1", "i2t/R@1"),
                    plot_params: Sequence[str] = PLOT_PARAMS) -> tuple[list[str], list[dict]]:
    """Write the summary (and plots against ``plot_params``) of the sweep in ``sweep_dir``;
    returns its columns and rows."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        return [], []
    columns, rows = sweep_rows(jobs, metrics)
    at = columns.index("objective") + 1  # where the objective was measured, beside it
    columns = [*columns[:at], OBJECTIVE_SPLIT, *columns[at:]]
    for row, job in zip(rows, jobs):
        row[OBJECTIVE_SPLIT] = _objective_split(job["results"])
    write_sweep_summary(sweep_dir, columns, rows)
    for param in [c for c in columns[2:columns.index("objective")]
                  if c.rsplit(".", 1)[-1] in plot_params]:
        try:
            _plot_against(param, columns, rows, metrics, sweep_dir)
        except ValueError as err:  # non-numeric α values, e.g. from a typo; the table is written
            log.warning("could not plot the sweep against %s: %s", param, err)
    return columns, rows


#: the job type of a sweep's summary run (W&B: filter or group the runs table by it)
SUMMARY_JOB_TYPE = "sweep-summary"


def best_job(rows: Sequence[dict], objective: str) -> dict | None:
    """The completed row with the best finite objective: the lowest for a rank (``*_rank``),
    else the highest (recalls); None when no job has one."""
    scored = [r for r in rows if r.get("status") == "completed"
              and isinstance(r.get("objective"), (int, float)) and math.isfinite(r["objective"])]
    if not scored:
        return None
    pick = min if objective.rsplit("/", 1)[-1].endswith("_rank") else max
    return pick(scored, key=lambda r: r["objective"])  # ties: the first job


def log_sweep_summary(logger, name: str, sweep_dir: Path, columns: Sequence[str],
                      rows: Sequence[dict], objective: str = "t2i/R@1") -> None:
    """One logger run ``<name>-summary`` (job type ``SUMMARY_JOB_TYPE``) in the sweep's group:
    its config names the best job (``best_job``) and that job's swept parameters, its scalars
    count the jobs and give the best objective; then the summary table and the sweep plots
    (``*_vs_*.png``). Never raises (loggers turn themselves off on errors)."""
    best = best_job(rows, objective)
    params = columns[2:columns.index("objective")] if "objective" in columns else []
    config: dict[str, Any] = {"sweep_dir": str(sweep_dir), "jobs": len(rows),
                              "objective": objective}
    scalars = {"sweep/jobs": len(rows),
               "sweep/failed": sum(r.get("status") != "completed" for r in rows)}
    if best is not None:
        config.update({"best_job": best["job"], **{f"best.{p}": best.get(p) for p in params}})
        scalars[f"best/{objective}"] = float(best["objective"])
    with logger:
        logger.start(config, name=f"{name}-summary", group=sweep_group(name, sweep_dir),
                     dir=sweep_dir, job_type=SUMMARY_JOB_TYPE)
        logger.log_metrics(scalars)
        logger.log_table("sweep_summary", list(columns), [[r.get(c) for c in columns] for r in rows])
        for png in sorted(sweep_dir.glob("*_vs_*.png")):
            logger.log_image(png.stem, png)


#: the lock file of the jobs' summary updates (joblib runs jobs in parallel), removed at the end
SUMMARY_LOCK = ".sweep_summary.lock"


class SweepSummary(Callback):
    """Writes ``sweep_summary.{csv,json}`` (and plots) into the sweep directory of a multirun and
    logs them to the experiment logger at the end.

    metrics: the metric keys summarised per job (baseline, method, delta); plot_params: swept
    parameters (last dotted part) to plot the metrics against.
    """

    def __init__(self, metrics: Sequence[str] = ("t2i/R@1", "i2t/R@1"),
                 plot_params: Sequence[str] = PLOT_PARAMS):
        self.metrics = list(metrics)
        self.plot_params = list(plot_params)

    def _update(self, config: DictConfig, final: bool) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        lock = sweep_dir / SUMMARY_LOCK
        with FileLock(str(lock)):
            columns, rows = summarise_sweep(sweep_dir, self.metrics, self.plot_params)
        if final:  # every job has ended: nobody takes the lock again
            lock.unlink(missing_ok=True)
        if final and rows:
            failed = [r["job"] for r in rows if r["status"] != "completed"]
            log.info("sweep summary (%s):\n%s", sweep_dir, format_sweep_table(columns, rows))
            on_test = [r["job"] for r in rows if "analysis" in str(r.get(OBJECTIVE_SPLIT))]
            if on_test:  # once per sweep, not once per job
                log.warning("the objective of jobs %s is measured on the test split: the sweep is "
                            "an analysis, not a selection of hyper-parameters; to choose them, "
                            "measure it on a held-out tuning part: reference.tuning_size=test "
                            "(or N images; a selecting sweeper such as Optuna gets one by "
                            "default)", on_test)
            logger = create_logger(lambda: instantiate(config.logger, _convert_="all"), sweep_dir,
                                   "the sweep summary is")
            log_sweep_summary(logger, str(config.name), sweep_dir, columns, rows,
                              objective=str(config.objective))
            if failed:  # the sweep ends with its summary and this one line, exit code 1
                print(f"Error: jobs {failed} of the sweep failed (their errors are in "
                      f"{sweep_dir / SWEEP_CSV} and their results.json)", file=sys.stderr)
                sys.exit(1)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            self._update(config, final=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._update(config, final=True)
