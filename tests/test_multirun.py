"""Sweeps: `python run.py -m ...` runs every job even when one fails, and summarises the sweep.

The joblib sweep runs ``run.py -m`` in a fresh interpreter (its workers are processes anyway);
the others go through the same command line in this process (``run_py``, conftest.py).
"""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from nnn.hydra_callbacks import MAX_SERIES, summarise_sweep, sweep_series
from nnn.config_dir import CONFIG_DIR
from nnn.results import SWEEP_CSV, read_results, sweep_rows, write_results

REPO = CONFIG_DIR.parent


def _args(sweep_dir, *overrides):
    return ["-m", "debug=tiny", "logger=none", f"hydra.sweep.dir={sweep_dir}", *overrides]


def test_sweep_with_a_failing_job_runs_the_others(tmp_path, run_py):
    sweep = tmp_path / "sweep"
    assert run_py(*_args(sweep, "method.k=-1,2")) != 0  # the failure is reported ...
    failed, done = read_results(sweep / "0"), read_results(sweep / "1")  # ... after both ran
    assert failed["status"] == "failed" and "k" in failed["error"]
    assert "method.k=-1" in failed["overrides"]
    assert done["status"] == "completed" and "method.k=2" in done["overrides"]
    rows = list(csv.DictReader((sweep / SWEEP_CSV).open()))
    assert [(r["method.k"], r["status"]) for r in rows] == [("-1", "failed"), ("2", "completed")]
    assert rows[0]["error"] and float(rows[1]["t2i/R@1 method"]) > 0


def test_sweep_with_hydra_full_error_logs_the_traceback_and_runs_the_others(tmp_path, run_py,
                                                                             monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    sweep = tmp_path / "sweep"
    assert run_py(*_args(sweep, "method.k=abc,4", "hydra.sweeper.max_batch_size=1")) == 1
    assert read_results(sweep / "0")["status"] == "failed"
    assert "Traceback" in (sweep / "0" / "run.log").read_text()
    assert read_results(sweep / "1")["status"] == "completed"  # the sweep went on


def test_job_whose_logger_setting_is_refused_is_recorded_as_failed(tmp_path, run_py):
    sweep = tmp_path / "sweep"
    assert run_py("-m", "debug=tiny", "logger=wandb", "logger.mode=bogus",
                  f"hydra.sweep.dir={sweep}") == 1
    failed = read_results(sweep / "0")
    assert failed["status"] == "failed" and "logger.mode='bogus'" in failed["error"]
    rows = list(csv.DictReader((sweep / SWEEP_CSV).open()))
    assert rows[0]["status"] == "failed" and "logger.mode" in rows[0]["error"]
    assert not (sweep / "0" / "wandb").exists()


def _check_alpha_sweep(sweep) -> None:
    rows = list(csv.DictReader((sweep / SWEEP_CSV).open()))
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert [r["method.alpha"] for r in rows] == ["0.5", "0.75"]
    # the CSV rounds each value to 2 decimals: three roundings of at most 0.005 each
    assert all(float(r["t2i/R@1 delta"]) == pytest.approx(
        float(r["t2i/R@1 method"]) - float(r["t2i/R@1 baseline"]), abs=0.015) for r in rows)
    for name in ("t2i_R1_vs_alpha.png", "i2t_R1_vs_alpha.png", "sweep_summary.json"):
        assert (sweep / name).is_file(), name
    for job in ("0", "1"):
        assert (sweep / job / "hubness.png").is_file()
    assert not (sweep / ".sweep_summary.lock").exists()  # removed once every job has ended


def test_two_job_sweep_completes_with_summary_and_alpha_plot(tmp_path, run_py):
    assert run_py(*_args(tmp_path / "sweep", "method.alpha=0.5,0.75")) == 0
    _check_alpha_sweep(tmp_path / "sweep")


@pytest.mark.slow
def test_joblib_launcher_sweep(tmp_path):
    """The one fresh-interpreter ``run.py -m``: two jobs in parallel worker processes."""
    proc = subprocess.run([sys.executable, "run.py",
                           *_args(tmp_path / "sweep", "hydra/launcher=joblib",
                                  "hydra.launcher.n_jobs=2", "method.alpha=0.5,0.75")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_alpha_sweep(tmp_path / "sweep")


def test_sweep_rows_keep_only_swept_parameters():
    jobs = [{"job": "0", "overrides": ["debug=tiny", "method.k=1", "+x=a"],
             "results": {"status": "completed", "objective": {"value": 50.0},
                         "metrics": {"baseline": {"t2i/R@1": 40.0}, "method": {"t2i/R@1": 50.0},
                                     "delta": {"t2i/R@1": 10.0}}}},
            {"job": "1", "overrides": ["debug=tiny", "method.k=8", "+x=a"], "results": None}]
    columns, rows = sweep_rows(jobs, ["t2i/R@1"])
    assert columns[:4] == ["job", "status", "method.k", "objective"]
    assert rows[0]["t2i/R@1 delta"] == 10.0 and rows[0]["objective"] == 50.0
    assert rows[1]["status"] == "missing" and rows[1]["t2i/R@1 method"] is None


def test_summarise_empty_directory(tmp_path):
    assert summarise_sweep(tmp_path) == ([], [])


def test_old_tune_switch_sweeps_as_tune_enabled(tmp_path, run_py):
    """``-m method.tune=true,false`` (the older spelling) sweeps ``tune.enabled``."""
    sweep = tmp_path / "sweep"
    assert run_py(*_args(sweep, "method.tune=true,false", "+tune.grid.alphas=[0.5]",
                         "+tune.grid.ks=[1,4]")) == 0
    tuned, plain = read_results(sweep / "0"), read_results(sweep / "1")
    assert "tune.enabled=True" in tuned["overrides"] and tuned["tuning"]  # as Hydra sweeps it
    assert tuned["config"]["tune"]["enabled"] is True and "tune" not in tuned["config"]["method"]
    assert "tune.enabled=False" in plain["overrides"] and not plain["tuning"]


def _optuna_like_rows(n: int = 20) -> list[dict]:
    """Summary rows of an Optuna sweep: alpha from an interval (a new float each trial), k from
    a choice of three."""
    rng = np.random.default_rng(0)
    return [{"job": str(i), "status": "completed", "method.alpha": str(rng.uniform(0, 1.5)),
             "method.k": str([1, 4, 8][i % 3]), "objective": 50.0,
             "t2i/R@1 baseline": 40.0, "t2i/R@1 method": 40.0 + i} for i in range(n)]


def test_sweep_plots_group_by_few_rounded_settings():
    rows = _optuna_like_rows()
    by_k = sweep_series(rows, "method.k", ["method.alpha"], "t2i/R@1")
    assert list(by_k) == ["t2i/R@1"]  # 20 alphas: no line each, one series of all trials
    assert sorted(by_k["t2i/R@1"][0]) == sorted(float(r["method.k"]) for r in rows)
    by_alpha = sweep_series(rows, "method.alpha", ["method.k"], "t2i/R@1")
    assert sorted(by_alpha) == ["method.k=1", "method.k=4", "method.k=8"]
    grid = [{**r, "method.alpha": a, "method.k": k} for r, (a, k) in
            zip(rows, [("0.5", "8"), ("0.6354821990083570", "8"), ("1.0", "64")])]
    labels = sweep_series(grid, "method.k", ["method.alpha"], "t2i/R@1")
    assert sorted(labels) == ["method.alpha=0.5", "method.alpha=0.635", "method.alpha=1"]
    assert MAX_SERIES < len(rows)


def test_optuna_like_sweep_summary_plots(tmp_path):
    for row in _optuna_like_rows():
        job = tmp_path / row["job"]
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- method.alpha={row['method.alpha']}\n- method.k={row['method.k']}\n")
        write_results(job, {"status": "completed", "objective": {"value": 50.0},
                            "metrics": {"baseline": {"t2i/R@1": 40.0},
                                        "method": {"t2i/R@1": row["t2i/R@1 method"]},
                                        "delta": {}}})
    columns, rows = summarise_sweep(tmp_path, metrics=["t2i/R@1"])
    assert len(rows) == 20
    assert (tmp_path / "t2i_R1_vs_k.png").is_file() and (tmp_path / "t2i_R1_vs_alpha.png").is_file()
